"""Emitters for transposed convolution, forward and backward side by side (bias and ReLU fused)."""
from __future__ import annotations

from .context import Context, scalars
from .conv import bias, bias_grad, geometry


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    data = ctx.node(node)
    (src,) = ctx.inputs(node)
    relu = data.get("activation") == "relu"
    args = scalars(*geometry(ctx, node), relu)
    return [ctx.empty(node), f"convtranspose_forward({ctx.var(src)}, {ctx.param(node, 'weight')}, "
                             f"{bias(ctx, node)}, {ctx.var(node)}, {args})"]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    data = ctx.node(node)
    (src,) = ctx.inputs(node)
    relu = data.get("activation") == "relu"
    db = bias_grad(ctx, node)
    indent = " " * len("convtranspose_backward(")
    return [f"convtranspose_backward({ctx.var(src)}, {ctx.param(node, 'weight')}, {ctx.var(node)}, {ctx.grad(node)},",
            f"{indent}{dx[0] or 'EMPTY4'}, {ctx.param_grad(node, 'weight')}, {db},"
            f" {scalars(*geometry(ctx, node), relu, dx[0] is not None)})"]
