"""GLNet models (Zhu et al., NeurIPS 2024) rebuilt to the authors' checkpoint layout."""

from .config import GLNetConfig, UnknownModelError, get_config, list_models
from .factory import create_model
from .model import GLNet

__all__ = ["GLNet", "GLNetConfig", "UnknownModelError", "create_model", "get_config", "list_models"]
