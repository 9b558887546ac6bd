"""cnnc: a declarative graph compiler for convolutional neural networks."""
from .diagnostics import DataError, ModelError

__all__ = ["ModelError", "DataError"]
__version__ = "0.1.0"
