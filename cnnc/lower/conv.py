"""Emitters for convolution, forward and backward side by side (bias, ReLU and batchnorm fused)."""
from __future__ import annotations

from .context import Context, scalars

# Winograd (kernels/conv.py, conv3x3_forward) pays from this many input channels on: measured on
# vgg_small's layers, 1.3x faster with 32-64 channels, even at 32 -> 64, 2x slower with 3.
WINOGRAD_MIN_CHANNELS = 16


def geometry(ctx: Context, node: str) -> tuple[int, ...]:
    data = ctx.node(node)
    sh, sw = data["attrs"]["stride"]
    top, _, left, _ = data["pads"]
    return sh, sw, top, left


def bias(ctx: Context, node: str) -> str:
    filters = ctx.node(node)["attrs"]["filters"]
    return ctx.param(node, "bias") if ctx.has_param(node, "bias") else f"np.zeros({filters}, np.float32)"


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    data = ctx.node(node)
    (src,) = ctx.inputs(node)
    relu = data.get("activation") == "relu"
    weight, b = ctx.param(node, "weight"), bias(ctx, node)
    lines = []
    if data.get("folded_bn"):
        bn = data["folded_bn"]
        eps = data["folded_eps"]
        w_shape = ctx.layout.slots[f"{node}.weight"][1]
        lines += [
            f"{ctx.var(node)}_w = np.empty({w_shape}, np.float32)",
            f"{ctx.var(node)}_b = np.empty({w_shape[0]}, np.float32)",
            f"fold_batchnorm({weight}, {b}, {ctx.param(bn, 'gamma')}, {ctx.param(bn, 'beta')},",
            f"               {ctx.param(bn, 'running_mean')}, {ctx.param(bn, 'running_var')}, {eps},"
            f" {ctx.var(node)}_w, {ctx.var(node)}_b)",
        ]
        weight, b = f"{ctx.var(node)}_w", f"{ctx.var(node)}_b"
    sh, sw, top, left = geometry(ctx, node)
    if winograd(ctx, node):
        call = f"conv3x3_forward({ctx.var(src)}, {weight}, {b}, {ctx.var(node)}, {scalars(top, left, relu)})"
    else:
        call = f"conv2d_forward({ctx.var(src)}, {weight}, {b}, {ctx.var(node)}, {scalars(sh, sw, top, left, relu)})"
    return lines + [ctx.empty(node), call]


def winograd(ctx: Context, node: str) -> bool:
    """3x3 filters at stride 1 over enough channels run as Winograd F(2x2, 3x3)."""
    return winograd_applies(ctx.node(ctx.inputs(node)[0])["shape"][0], ctx.node(node)["attrs"])


def winograd_applies(src_channels: int, attrs: dict) -> bool:
    return (tuple(attrs["size"]) == (3, 3) and tuple(attrs["stride"]) == (1, 1)
            and src_channels >= WINOGRAD_MIN_CHANNELS)


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    data = ctx.node(node)
    (src,) = ctx.inputs(node)
    relu = data.get("activation") == "relu"
    filters = data["attrs"]["filters"]
    db = ctx.param_grad(node, "bias") if ctx.has_param(node, "bias") else f"np.empty({filters}, np.float32)"
    dx_arg = dx[0] or "EMPTY4"
    return [f"conv2d_backward({ctx.var(src)}, {ctx.param(node, 'weight')}, {ctx.var(node)}, {ctx.grad(node)},",
            f"                {dx_arg}, {ctx.param_grad(node, 'weight')}, {db},"
            f" {scalars(*geometry(ctx, node), relu, dx[0] is not None)})"]
