"""Emitters for convolution, forward and backward side by side (bias, ReLU, batchnorm and residual add fused).

Four kernels: depthwise (groups = input channels, kernels/depthwise.py), Winograd (3x3, stride 1,
enough channels, kernels/winograd.py: F(2x2) for training's forward, F(4x4) where it may),
direct (few input channels, large planes, kernels/direct.py) and im2col + BLAS for the
rest (dilation and groups too)."""
from __future__ import annotations

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
# At stride 2, on the input's phases, against im2col: 16 -> 32 at 32x32 0.78 / 1.88-1.97 against
# 1.10-1.15 / 1.99-2.04; 3 -> 32 0.26 / 0.46 against 1.19 / 1.51; 8 -> 16 5x5 at 64x64 1.50 /
# 4.62 against 3.12 / 4.84; 32 -> 64 at 16x16 (above the limit) 1.26 / 5.9 against 0.91 / 1.72.
DIRECT_MAX_CHANNELS = 16
DIRECT_MIN_PLANE = 256
# At a stride, the direct forward (not its backward, whose input gradient is scattered) up to
# this many input channels on planes of any size. 32 -> 64 at 16x16 (8x8 out), 16 images: 0.41
# ms alone, im2col 1.08 alone and 0.52 a call in resnet20's batch-256 inference (one lane's BLAS).
DIRECT_STRIDED_MAX_CHANNELS = 32


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
    weight, b, scale = ctx.param(node, "weight"), bias(ctx, node), "EMPTY1"
    lines = []
    if data.get("folded_bn"):  # the kernel scales its outputs: norm.batchnorm_scale_shift
        bn, filters, v = data["folded_bn"], data["attrs"]["filters"], ctx.var(node)
        lines += [
            f"{v}_scale, {v}_shift = np.empty({filters}, np.float32), np.empty({filters}, np.float32)",
            f"batchnorm_scale_shift({b}, {ctx.param(bn, 'gamma')}, {ctx.param(bn, 'beta')}, "
            f"{ctx.param(bn, 'running_mean')},",
            f"                      {ctx.param(bn, 'running_var')}, {data['folded_eps']}, {v}_scale, {v}_shift)",
        ]
        b, scale = f"{v}_shift", f"{v}_scale"
    sh, sw, top, left = geometry(ctx, node)
    head = f"{ctx.var(src)}, {weight}, {b}, {scale}, {res}, {ctx.var(node)}"
    if winograd(ctx, node):
        allow_f4 = not training  # F(4x4)'s coarser rounding only where no gradient follows: kernels/winograd.py
        # inference keeps the transformed filters between calls when the runtime passes a memo
        filters, channels = data["attrs"]["filters"], ctx.node(src)["shape"][0]
        memo = "EMPTY3, EMPTY1" if training else f'*winograd_memo(memo, "{node}", {channels}, {filters})'
        call = f"conv3x3_forward({head}, {scalars(top, left, relu, allow_f4)}, {memo})"
    elif direct_forward(ctx, node):
        call = f"direct_forward({head}, {scalars(sh, sw, top, left, *data['attrs']['dilation'], relu)})"
    else:
        kernel = "depthwise_forward" if depthwise(ctx, node) else "conv2d_forward"
        call = f"{kernel}({head}, {scalars(sh, sw, top, left, *spacing(ctx, node), relu)})"
    return lines + [ctx.empty(node), call]


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
    """One group, not 1x1 (the pointwise path), few input channels, large output planes."""
    attrs = data["attrs"]
    _, oh, ow = data["shape"]
    return (attrs["groups"] == 1 and tuple(attrs["size"]) != (1, 1)
            and src_channels <= DIRECT_MAX_CHANNELS and oh * ow >= DIRECT_MIN_PLANE)


def direct_forward(ctx: Context, node: str) -> bool:
    return direct_forward_applies(ctx.node(ctx.inputs(node)[0])["shape"][0], ctx.node(node))


def direct_forward_applies(src_channels: int, data: dict) -> bool:
    """The forward runs direct where the backward does, and at a stride on up to
    DIRECT_STRIDED_MAX_CHANNELS channels (the backward then im2col's)."""
    attrs = data["attrs"]
    return direct_applies(src_channels, data) or (
        attrs["groups"] == 1 and tuple(attrs["size"]) != (1, 1) and tuple(attrs["stride"]) != (1, 1)
        and src_channels <= DIRECT_STRIDED_MAX_CHANNELS)


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
        kernel, geometry_args = "direct_backward", (sh, sw, top, left, *data["attrs"]["dilation"])
    else:
        kernel = "depthwise_backward" if depthwise(ctx, node) else "conv2d_backward"
        geometry_args = (sh, sw, top, left, *spacing(ctx, node))
    indent = " " * (len(kernel) + 1)
    return [f"{kernel}({ctx.var(src)}, {ctx.param(node, 'weight')}, {ctx.var(node)}, {ctx.grad(node)},",
            f"{indent}{dx_arg}, {ctx.param_grad(node, 'weight')}, {db},"
            f" {scalars(*geometry_args, relu, dx[0] is not None, *add_dx)})"]
