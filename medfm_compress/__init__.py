"""medfm-compress: distill, quantize, export and benchmark medical-imaging models.

Importing the package is cheap: it pulls in neither torch nor onnxruntime nor any GPU backend.
Stage functions live in their subpackages (``medfm_compress.compress.distill`` ...).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
