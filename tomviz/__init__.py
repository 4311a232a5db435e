"""tomviz: inspect token merging inside transformers, layer by layer."""
from tomviz.api import InspectResult, inspect, patch, unpatch
from tomviz.merge import METHODS, get_method
from tomviz.models.loading import DEFAULT_MODELS, LoadedModel, ModelLoadError, load
from tomviz.trace import Trace

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODELS", "METHODS", "InspectResult", "LoadedModel", "ModelLoadError", "Trace", "get_method", "inspect", "load", "patch", "unpatch"]
