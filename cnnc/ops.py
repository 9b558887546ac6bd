"""The one table of ops: their keys, defaults, value kinds, input counts, parameters and FLOPs.

The parser's checks, the shape rules, the summary, the DOT labels and docs/language.md all read
this table, so an op or a key is added here and nowhere else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

REQUIRED = object()  # the default of a key the user must give


@dataclass(frozen=True)
class Key:
    """One key of an op: the kind of value it takes (see syntax.check_value) and its default."""

    kind: str
    default: object = REQUIRED
    doc: str = ""


@dataclass(frozen=True)
class Op:
    """One op of the language: its keys, how many inputs it takes, and what it is."""

    name: str
    doc: str
    keys: dict[str, Key] = field(default_factory=dict)
    min_inputs: int = 1
    max_inputs: int = 1
    shown: tuple[str, ...] = ()  # keys shown in DOT labels and the summary
    positional: str | None = None  # the kind of a bare value (`input 1x28x28`)


ACTIVATIONS = ("none", "relu", "sigmoid", "tanh")
PADDINGS = ("valid", "same", "full")

_WINDOW = {
    "size": Key("pair", doc="window size K or KhxKw"),
    "stride": Key("pair", None, "stride S or ShxSw; defaults to size"),
    "padding": Key("padding", "valid", "valid, same, full, P or PhxPw"),
    "rounding": Key("choice:floor,ceil", "floor", "floor or ceil: whether a last, partial window counts"),
}

OPS: dict[str, Op] = {op.name: op for op in [
    Op("input", "the network's input, a shape CxHxW", min_inputs=0, max_inputs=0, positional="shape"),
    Op("conv", "2-d convolution", {
        "filters": Key("count", doc="number of output channels"),
        "size": Key("pair", doc="kernel size K or KhxKw"),
        "stride": Key("pair", (1, 1), "stride S or ShxSw"),
        "padding": Key("padding", "valid", "valid, same, full, P or PhxPw"),
        "bias": Key("bool", True, "add a learned bias"),
        "batchnorm": Key("bool", False, "batch normalization after it (before the activation)"),
        "activation": Key("activation", "none", "none or relu, sigmoid, tanh after it"),
        "groups": Key("count", 1, "channel groups G: each filter sees C/G input channels (G = C: depthwise)"),
        "dilation": Key("pair", (1, 1), "spacing D or DhxDw between kernel taps"),
    }, shown=("filters", "size", "stride", "padding", "groups", "dilation")),
    Op("maxpool", "max pooling; padding never wins", dict(_WINDOW), shown=("size", "stride", "padding", "rounding")),
    Op("avgpool", "average pooling over the real (not padded) elements, or all with count_pad=true",
       dict(_WINDOW) | {"count_pad": Key("bool", False, "divide by the whole window, padding included")},
       shown=("size", "stride", "padding", "rounding", "count_pad")),
    Op("globalavgpool", "average over each channel's whole plane"),
    Op("relu", "max(0, x)"),
    Op("sigmoid", "1 / (1 + exp(-x))"),
    Op("tanh", "hyperbolic tangent"),
    Op("softmax", "softmax over the last axis, or over the channels of each pixel", {
        "axis": Key("choice:last,channels", "last", "last (a vector's classes) or channels (per pixel)"),
    }, shown=("axis",)),
    Op("dropout", "zeroes a fraction of values in training; identity in inference",
       {"rate": Key("fraction", 0.5, "fraction of values dropped")}, shown=("rate",)),
    Op("batchnorm", "batch normalization over channels", {
        "eps": Key("positive", 1e-5, "added to the variance"),
        "momentum": Key("fraction", 0.1, "weight of the batch in the running statistics"),
    }),
    Op("flatten", "C x H x W -> C*H*W, in C, H, W order"),
    Op("dense", "fully connected layer", {
        "units": Key("count", doc="number of outputs"),
        "bias": Key("bool", True, "add a learned bias"),
        "activation": Key("activation", "none", "none or relu, sigmoid, tanh after it"),
    }, shown=("units",)),
    Op("add", "elementwise sum of inputs of one shape", min_inputs=2, max_inputs=None),
    Op("concat", "join inputs along channels", min_inputs=2, max_inputs=None),
    Op("convtranspose", "transposed 2-d convolution (PyTorch's ConvTranspose2d)", {
        "filters": Key("count", doc="number of output channels"),
        "size": Key("pair", doc="kernel size K or KhxKw"),
        "stride": Key("pair", (1, 1), "stride S or ShxSw"),
        "padding": Key("nonnegative_pair", (0, 0), "P or PhxPw, cut from each side of the output"),
        "output_padding": Key("nonnegative_pair", (0, 0), "rows and columns added at the bottom and right"),
        "bias": Key("bool", True, "add a learned bias"),
        "batchnorm": Key("bool", False, "batch normalization after it (before the activation)"),
        "activation": Key("activation", "none", "none or relu, sigmoid, tanh after it"),
    }, shown=("filters", "size", "stride", "padding", "output_padding")),
    Op("upsample", "enlarge H and W by integer factors", {
        "factor": Key("pair", doc="factor F or FhxFw"),
        "mode": Key("choice:nearest,bilinear", "nearest", "nearest or bilinear (PyTorch's align_corners=False)"),
    }, shown=("factor", "mode")),
]}

# Statements that are not layers: `model NAME`, `loss KIND`, `train KEY=VALUE ...`.
LOSSES = ("cross_entropy",)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
TRAIN_KEYS: dict[str, Key] = {
    "optimizer": Key("choice:sgd,adam,adamw", "sgd", "sgd, adam or adamw"),
    "lr": Key("positive", 0.01, "learning rate"),
    "momentum": Key("fraction", 0.0, "SGD momentum"),
    "nesterov": Key("bool", False, "Nesterov momentum (SGD)"),
    "weight_decay": Key("nonnegative", 0.0, "L2 penalty added to the gradient (decoupled with adamw)"),
    "batch": Key("count", 32, "batch size"),
    "epochs": Key("count", 1, "number of epochs"),
    "seed": Key("nonnegative_int", 0, "seed of initialization, shuffling and dropout"),
    "schedule": Key("choice:constant,step,cosine,onecycle", "constant", "learning-rate schedule"),
    "step_size": Key("count", 1, "epochs between decays (step schedule)"),
    "gamma": Key("positive", 0.1, "decay factor (step schedule)"),
    # The recipe pieces of docs/language.md section 7 (cnnc/train/augment.py, optim.py, loop.py).
    "warmup": Key("nonnegative_int", 0, "epochs of linear learning-rate warmup, per step"),
    "label_smoothing": Key("fraction", 0.0, "weight of the uniform distribution mixed into the labels"),
    "decay_norm_bias": Key("bool", True, "weight decay on batchnorm and bias parameters too"),
    "crop": Key("nonnegative_int", 0, "random crop after zero padding this many pixels per side"),
    "flip": Key("bool", False, "random horizontal flip of half the training images"),
    "normalize": Key("choice:none,auto", "none", "auto: per-channel mean and std of the training images"),
    "mean": Key("number", None, "the mean subtracted from every channel (with std)"),
    "std": Key("positive", None, "the std every channel is divided by (with mean)"),
    "val": Key("fraction", 0.0, "fraction of the training images held out for validation"),
    "keep": Key("choice:last,best", "last", "best: the weights of the best validation accuracy"),
    "patience": Key("nonnegative_int", 0, "stop after this many epochs without validation improvement (0: never)"),
}
STATEMENTS = ("model", "loss", "train")


def param_shapes(op: str, attrs: dict, in_shape: tuple) -> dict[str, tuple]:
    """The parameters a layer owns, kind -> shape, in PyTorch layout."""
    if op == "conv":
        kh, kw = attrs["size"]
        shapes = {"weight": (attrs["filters"], in_shape[0] // attrs["groups"], kh, kw)}
        return shapes | ({"bias": (attrs["filters"],)} if attrs["bias"] else {})
    if op == "convtranspose":
        kh, kw = attrs["size"]
        shapes = {"weight": (in_shape[0], attrs["filters"], kh, kw)}
        return shapes | ({"bias": (attrs["filters"],)} if attrs["bias"] else {})
    if op == "dense":
        shapes = {"weight": (attrs["units"], in_shape[0])}
        return shapes | ({"bias": (attrs["units"],)} if attrs["bias"] else {})
    if op == "batchnorm":
        c = (in_shape[0],)
        return {"gamma": c, "beta": c, "running_mean": c, "running_var": c}
    return {}


BUFFER_KINDS = ("running_mean", "running_var")  # saved with the weights, not trained


def effective_size(attrs: dict) -> tuple[int, int]:
    """The extent a dilated kernel covers, (K - 1) * D + 1 per axis (the size itself for windows)."""
    dh, dw = attrs.get("dilation", (1, 1))
    kh, kw = attrs["size"]
    return (kh - 1) * dh + 1, (kw - 1) * dw + 1


def flops(op: str, attrs: dict, in_shapes: list[tuple], out_shape: tuple) -> int:
    """Floating-point operations of one forward pass per image (a multiply-add counts as 2)."""
    out = math.prod(out_shape)
    if op == "conv":
        kh, kw = attrs["size"]
        return 2 * out * (in_shapes[0][0] // attrs["groups"]) * kh * kw
    if op == "convtranspose":  # each input value times each weight of its channel
        kh, kw = attrs["size"]
        return 2 * math.prod(in_shapes[0]) * attrs["filters"] * kh * kw
    if op == "dense":
        return 2 * out * in_shapes[0][0]
    if op in ("maxpool", "avgpool"):
        kh, kw = attrs["size"]
        return out * kh * kw
    if op == "globalavgpool":
        return math.prod(in_shapes[0])
    if op == "upsample":
        return 0 if attrs["mode"] == "nearest" else 6 * out  # copies; or 3 lerps, a multiply-add each
    if op in ("add",):
        return out * (len(in_shapes) - 1)
    if op in ("sigmoid", "tanh", "softmax", "batchnorm"):
        return 4 * out
    if op in ("relu", "dropout"):
        return out
    return 0


def show_value(value) -> str:
    """A key's value as the user writes it: `3` for a square pair (3, 3), `3x5` otherwise."""
    if isinstance(value, tuple):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Keys a label leaves out at their default.
QUIET_DEFAULTS = ("padding", "output_padding", "mode", "rounding", "count_pad", "axis", "groups", "dilation")


def describe(op: str, attrs: dict) -> str:
    """`filters=6 size=5 padding=same`: the keys the table shows, leaving out unremarkable defaults."""
    parts = []
    for key in OPS[op].shown:
        value = attrs[key]
        if key == "padding" and value == "valid" or key == "stride" and value in ((1, 1), attrs["size"]):
            continue
        if key in QUIET_DEFAULTS and value == OPS[op].keys[key].default:
            continue
        parts.append(f"{key}={show_value(value)}")
    return " ".join(parts)
