"""Emitters for the ops that only move data: input (NCHW -> CNHW), flatten (CNHW -> N x CHW), softmax."""
from __future__ import annotations

from .context import Context



def forward(ctx: Context, node: str, training: bool) -> list[str]:
    op, out = ctx.node(node)["op"], ctx.var(node)
    if op == "input":
        return [ctx.empty(node), f"nchw_to_cnhw(x, {out})"]
    (src,) = ctx.inputs(node)
    if op == "softmax":
        return [ctx.empty(node), f"{softmax_kernel(ctx, node)}_forward({ctx.var(src)}, {out})"]
    if len(ctx.node(src)["shape"]) == 1:
        return [f"{out} = {ctx.var(src)}  # already a vector"]
    return [ctx.empty(node), f"flatten_forward({ctx.var(src)}, {out})"]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    op, dout = ctx.node(node)["op"], ctx.grad(node)
    if op == "softmax":
        return [f"{softmax_kernel(ctx, node)}_backward({ctx.var(node)}, {dout}, {dx[0]})"]
    (src,) = ctx.inputs(node)
    if len(ctx.node(src)["shape"]) == 1:
        return [f"add_into({dx[0]}, {dout})"]
    return [f"flatten_backward({dout}, {dx[0]})"]


def softmax_kernel(ctx: Context, node: str) -> str:
    """softmax over the last axis, or softmax_channels over the channels of each pixel (CNHW's first axis)."""
    return "softmax_channels" if ctx.node(node)["attrs"]["axis"] == "channels" else "softmax"
