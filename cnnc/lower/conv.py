"""Emitters for convolution, forward and backward side by side (bias, ReLU, batchnorm and residual add fused).

Four kernels: depthwise (groups = input channels, kernels/depthwise.py), Winograd (3x3, stride 1,
enough channels, kernels/winograd.py: F(2x2) for training's forward, F(4x4) where it may),
direct (stride 1, few input channels, large planes, kernels/direct.py) and im2col + BLAS for the
rest (dilation and groups too)."""
from __future__ import annotations

import math

from .context import Context, scalars

# Winograd (kernels/winograd.py) pays from this many input channels on: measured on
# vgg_small's layers, 1.3x faster with 32-64 channels, even at 32 -> 64, 2x slower with 3.
WINOGRAD_MIN_CHANNELS = 16
# Its backward (conv3x3_backward) from this many input and output channels on: one thread, 32
# images, against im2col, with OpenBLAS's AVX-512 kernels: 1.1x faster at 16 -> 16 (32x32), 2x
# at 32 -> 32 (16x16), 2-2.5x at 64 -> 64 and 128 -> 128. (With its AVX2 kernels the 16 -> 16
# layer was 1.2x slower: there the products are a smaller share than the transforms.)
WINOGRAD_BACKWARD_MIN_CHANNELS = 16
# The direct kernels (kernels/direct.py) up to this many input channels, on output planes of at
# least DIRECT_MIN_PLANE elements. One thread, 32 images, forward / backward in ms, direct against
# the others: 16 -> 16 at 32x32 0.86 / 1.80 against Winograd's 1.52 (F(2x2)) or 1.21 (F(4x4)) /
# 2.59; at 16x16 0.32 / 0.63 against 0.45 or 0.34 / 0.73; 8 -> 8 at 16x16 0.10 / 0.21 against
# im2col's 0.56 / 0.77; 16 -> 16 5x5 at 32x32 3.5 / 8.7 against im2col's 11.0 / 13.3. Winograd
# wins from 32 channels (32 -> 32 at 32x32: 3.2 / 7.2 against 3.2 or 2.5 / 6.2; taking them
# direct on planes of 1024 or more left vgg_small's step and batch-256 inference no faster).
DIRECT_MAX_CHANNELS = 16
DIRECT_MIN_PLANE = 256
# A batch small enough to run whole on one thread (cnnc/lanes.py) runs the layers the direct
# kernel can do with at least this many multiply-adds an image on every core instead
# (direct_forward_parallel). Batch 1, two cores, A/B: resnet20 1.00 -> 0.70 ms, vgg_small 0.42 ->
# 0.26, resnet_tiny 0.20 -> 0.155; batch 4: resnet20 2.78 -> 2.38.
PARALLEL_MIN_MACS = 500_000


def folds(ctx: Context) -> tuple[list[list[int]], list[float]]:
    """The rows of kernels/norm.py's fold_batchnorms for the convs that absorbed a batchnorm
    (passes/fold_batchnorm.py), and their epsilons: where their weights, biases and batchnorm
    parameters sit in P, and where the folded weights and biases go in W, one after the other.
    Each conv folds its own row just before it runs, while its weights stay in cache: folding
    them all first made mobilenet_v1's batch-1 forward 11% slower; a call per conv with all
    its arrays as arguments cost resnet20's 4% more than this one with a row number."""
    rows, eps, at = [], [], 0
    for node in ctx.g:
        data = ctx.node(node)
        if data["op"] != "conv" or not data.get("folded_bn"):
            continue
        bn = data["folded_bn"]
        offset, shape = ctx.layout.slots[f"{node}.weight"]
        filters, size = shape[0], math.prod(shape)
        bias = ctx.layout.slots[f"{node}.bias"][0] if ctx.has_param(node, "bias") else -1
        stats = [ctx.layout.slots[f"{bn}.{kind}"][0] for kind in ("gamma", "beta", "running_mean", "running_var")]
        rows.append([offset, bias, *stats, filters, size // filters, at, at + size])
        eps.append(data["folded_eps"])
        at += size + filters
    return rows, eps


def folded(ctx: Context, node: str) -> tuple[int, str, str]:
    """The conv's row of folds(), and its folded weight and bias as views into W."""
    rows, _ = folds(ctx)
    offset, shape = ctx.layout.slots[f"{node}.weight"]
    r = next(r for r, row in enumerate(rows) if row[0] == offset)
    filters, w_at, b_at = rows[r][6], rows[r][8], rows[r][9]
    return r, f"W[{w_at}:{b_at}].reshape({shape})", f"W[{b_at}:{b_at + filters}]"


def geometry(ctx: Context, node: str) -> tuple[int, ...]:
    data = ctx.node(node)
    sh, sw = data["attrs"]["stride"]
    top, _, left, _ = data["pads"]
    return sh, sw, top, left


def spacing(ctx: Context, node: str) -> tuple[int, ...]:
    """The dilation, and the groups unless the kernel is the depthwise one (whose groups are its channels)."""
    attrs = ctx.node(node)["attrs"]
    return tuple(attrs["dilation"]) + (() if depthwise(ctx, node) else (attrs["groups"],))


def depthwise(ctx: Context, node: str) -> bool:
    return depthwise_applies(ctx.node(ctx.inputs(node)[0])["shape"][0], ctx.node(node)["attrs"])


def depthwise_applies(src_channels: int, attrs: dict) -> bool:
    """One group per input channel: the depthwise kernel, plane by plane."""
    return attrs["groups"] > 1 and attrs["groups"] == src_channels


def bias(ctx: Context, node: str) -> str:
    filters = ctx.node(node)["attrs"]["filters"]
    return ctx.param(node, "bias") if ctx.has_param(node, "bias") else f"np.zeros({filters}, np.float32)"


def bias_grad(ctx: Context, node: str) -> str:
    """Where the backward writes the bias gradient: a scratch array when the layer has no bias."""
    filters = ctx.node(node)["attrs"]["filters"]
    return ctx.param_grad(node, "bias") if ctx.has_param(node, "bias") else f"np.empty({filters}, np.float32)"


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    data = ctx.node(node)
    src, *residual = ctx.inputs(node)  # a second input is a residual fused in (passes/fuse_add.py)
    res = ctx.var(residual[0]) if residual else "EMPTY4"
    relu = data.get("activation") == "relu"
    weight, b = ctx.param(node, "weight"), bias(ctx, node)
    lines = []
    if data.get("folded_bn"):  # its weights and bias with the batchnorm folded in, into W (see folds)
        row, weight, b = folded(ctx, node)
        lines.append(f"fold_batchnorms(P, FOLDS, FOLD_EPS, W, {row}, {row + 1})")
    sh, sw, top, left = geometry(ctx, node)
    geometry_args = scalars(top, left, *data["attrs"]["dilation"], relu)
    if winograd(ctx, node):
        allow_f4 = not training  # F(4x4)'s coarser rounding only where no gradient follows: kernels/winograd.py
        call = (f"conv3x3_forward({ctx.var(src)}, {weight}, {b}, {res}, {ctx.var(node)}, "
                f"{scalars(top, left, relu, allow_f4)})")
    elif direct(ctx, node):
        call = f"direct_forward({ctx.var(src)}, {weight}, {b}, {res}, {ctx.var(node)}, {geometry_args})"
    else:
        kernel = "depthwise_forward" if depthwise(ctx, node) else "conv2d_forward"
        call = (f"{kernel}({ctx.var(src)}, {weight}, {b}, {res}, {ctx.var(node)}, "
                f"{scalars(sh, sw, top, left, *spacing(ctx, node), relu)})")
    if training or not parallel_direct(ctx, node):
        return lines + [ctx.empty(node), call]
    parallel = f"direct_forward_parallel({ctx.var(src)}, {weight}, {b}, {res}, {ctx.var(node)}, {geometry_args}, threads)"
    return lines + [ctx.empty(node), "if threads > 1:  # a small batch, whole on this thread: its filters on every core",
                    "    " + parallel, "else:", "    " + call]


def winograd(ctx: Context, node: str) -> bool:
    """3x3 filters at stride 1 over enough channels run as Winograd (unless the direct kernel does)."""
    return winograd_applies(ctx.node(ctx.inputs(node)[0])["shape"][0], ctx.node(node))


def winograd_applies(src_channels: int, data: dict) -> bool:
    attrs = data["attrs"]
    return (tuple(attrs["size"]) == (3, 3) and tuple(attrs["stride"]) == (1, 1)
            and tuple(attrs["dilation"]) == (1, 1) and attrs["groups"] == 1
            and src_channels >= WINOGRAD_MIN_CHANNELS and not direct_applies(src_channels, data))


def direct(ctx: Context, node: str) -> bool:
    return direct_applies(ctx.node(ctx.inputs(node)[0])["shape"][0], ctx.node(node))


def direct_applies(src_channels: int, data: dict) -> bool:
    """Few input channels, large output planes."""
    _, oh, ow = data["shape"]
    return direct_can(data) and src_channels <= DIRECT_MAX_CHANNELS and oh * ow >= DIRECT_MIN_PLANE


def direct_can(data: dict) -> bool:
    """What the direct kernels do: stride 1, one group, not 1x1 (that is the pointwise path)."""
    attrs = data["attrs"]
    return tuple(attrs["stride"]) == (1, 1) and attrs["groups"] == 1 and tuple(attrs["size"]) != (1, 1)


def parallel_direct(ctx: Context, node: str) -> bool:
    """Whether a small batch runs this layer as direct_forward_parallel (see PARALLEL_MIN_MACS)."""
    data = ctx.node(node)
    f, oh, ow = data["shape"]
    kh, kw = data["attrs"]["size"]
    channels = ctx.node(ctx.inputs(node)[0])["shape"][0]
    return direct_can(data) and f * channels * kh * kw * oh * ow >= PARALLEL_MIN_MACS


def winograd_backward(ctx: Context, node: str) -> bool:
    return winograd_backward_applies(ctx.node(ctx.inputs(node)[0])["shape"][0], ctx.node(node))


def winograd_backward_applies(src_channels: int, data: dict) -> bool:
    """The backward of such a layer, when its padding lets the input gradient be one too (at most 2)."""
    top, _, left, _ = data["pads"]
    channels = min(src_channels, data["attrs"]["filters"])
    return (winograd_applies(src_channels, data) and channels >= WINOGRAD_BACKWARD_MIN_CHANNELS
            and max(top, left) <= 2)


def overwrites(ctx: Context, node: str, index: int) -> bool:
    """Whether the backward can write its input's gradient instead of adding to it (the
    Winograd and direct kernels can; lower/program.py then skips zeroing the buffer)."""
    return index == 0 and (winograd_backward(ctx, node) or direct(ctx, node))


def backward(ctx: Context, node: str, dx: list[str | None], fresh: list[bool]) -> list[str]:
    """`fresh[0]`: dx is the first gradient written into its buffer (see overwrites)."""
    data = ctx.node(node)
    (src,) = ctx.inputs(node)
    relu = data.get("activation") == "relu"
    db = bias_grad(ctx, node)
    dx_arg = dx[0] or "EMPTY4"
    sh, sw, top, left = geometry(ctx, node)
    add_dx = (not fresh[0],) if overwrites(ctx, node, 0) else ()  # only the kernels that can write dx take the flag
    if winograd_backward(ctx, node):
        kernel, geometry_args = "conv3x3_backward", (top, left)
    elif direct(ctx, node):
        kernel, geometry_args = "direct_backward", (top, left, *data["attrs"]["dilation"])
    else:
        kernel = "depthwise_backward" if depthwise(ctx, node) else "conv2d_backward"
        geometry_args = (sh, sw, top, left, *spacing(ctx, node))
    indent = " " * (len(kernel) + 1)
    return [f"{kernel}({ctx.var(src)}, {ctx.param(node, 'weight')}, {ctx.var(node)}, {ctx.grad(node)},",
            f"{indent}{dx_arg}, {ctx.param_grad(node, 'weight')}, {db},"
            f" {scalars(*geometry_args, relu, dx[0] is not None, *add_dx)})"]
