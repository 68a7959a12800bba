"""Compression stages: distillation, quantization, sensitivity."""
