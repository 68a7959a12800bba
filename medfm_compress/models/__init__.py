"""Model factories (timm names, user factories), weight loading and model cards."""

from .card import ModelCard, load_model, resolve_model_files
from .factory import MODEL_KINDS, count_params, create_model, parse_model_spec
from .weights import load_weights, read_state_dict, save_state_dict

__all__ = [
    "ModelCard",
    "load_model",
    "resolve_model_files",
    "MODEL_KINDS",
    "count_params",
    "create_model",
    "parse_model_spec",
    "load_weights",
    "read_state_dict",
    "save_state_dict",
]
