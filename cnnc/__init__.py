"""cnnc: a declarative graph compiler for convolutional neural networks.

    net = cnnc.compile("lenet5.cnn")     # or cnnc.compile_source(text)
    probs = net.forward(x)               # x: float32 N x C x H x W
    loss, grads = net.loss_and_grads(x, y)
"""
from .diagnostics import DataError, InputError, ModelError
from .runtime import Network, compile, compile_source

__all__ = ["compile", "compile_source", "Network", "ModelError", "DataError", "InputError"]
__version__ = "0.1.0"
