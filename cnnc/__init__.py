"""cnnc: a declarative graph compiler for convolutional neural networks.

    net = cnnc.compile("lenet5.cnn")     # or cnnc.compile_source(text)
    probs = net.forward(x)               # x: float32 N x C x H x W
    loss, grads = net.loss_and_grads(x, y)
"""
from .diagnostics import DataError, InputError, ModelError

__all__ = ["compile", "compile_source", "Network", "ModelError", "DataError", "InputError"]
__version__ = "0.1.0"


def __getattr__(name):
    """The runtime (networkx, lark, Numba) loads on first use: the compile helper process
    (cnnc/precompile.py) imports only the kernels, and starts that much sooner."""
    if name in ("Network", "compile", "compile_source"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'cnnc' has no attribute {name!r}")
