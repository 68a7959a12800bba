"""Export: ONNX (checked, cleaned, metadata inside) and TensorRT engines."""
