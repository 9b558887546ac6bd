"""Emitters for the fully connected layer (bias and ReLU fused), forward and backward side by side."""
from __future__ import annotations

from .context import Context, scalars



def bias(ctx: Context, node: str, grad: bool) -> str:
    if ctx.has_param(node, "bias"):
        return ctx.param_grad(node, "bias") if grad else ctx.param(node, "bias")
    units = ctx.node(node)["attrs"]["units"]
    return f"np.{'empty' if grad else 'zeros'}({units}, np.float32)"


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    (src,) = ctx.inputs(node)
    relu = ctx.node(node).get("activation") == "relu"
    return [ctx.empty(node),
            f"dense_forward({ctx.var(src)}, {ctx.param(node, 'weight')}, {bias(ctx, node, False)},"
            f" {ctx.var(node)}, {scalars(relu)})"]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    (src,) = ctx.inputs(node)
    relu = ctx.node(node).get("activation") == "relu"
    return [f"dense_backward({ctx.var(src)}, {ctx.param(node, 'weight')}, {ctx.var(node)}, {ctx.grad(node)},",
            f"               {dx[0] or 'EMPTY2'}, {ctx.param_grad(node, 'weight')}, {bias(ctx, node, True)},"
            f" {scalars(relu, dx[0] is not None)})"]
