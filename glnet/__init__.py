"""GLNet models (Zhu et al., NeurIPS 2024) rebuilt to the authors' checkpoint layout."""

from .config import GLNetConfig, UnknownModelError, get_config, list_models
from .factory import LoadedModel, create_model, load_model
from .model import GLNet

__all__ = ["GLNet", "GLNetConfig", "LoadedModel", "UnknownModelError", "create_model", "get_config", "list_models",
           "load_model"]
