"""Emitters for upsampling, forward and backward side by side."""
from __future__ import annotations

from .context import Context, scalars


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    attrs = ctx.node(node)["attrs"]
    (src,) = ctx.inputs(node)
    return [ctx.empty(node),
            f"upsample_{attrs['mode']}_forward({ctx.var(src)}, {ctx.var(node)}, {scalars(*attrs['factor'])})"]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    attrs = ctx.node(node)["attrs"]
    return [f"upsample_{attrs['mode']}_backward({ctx.grad(node)}, {dx[0]}, {scalars(*attrs['factor'])})"]
