"""Emitters for add and concat, the ops that join branches; forward and backward side by side."""
from __future__ import annotations

from .context import Context, scalars



def offsets(ctx: Context, node: str) -> list[int]:
    """The first channel of each input inside the concatenated output."""
    starts, c = [], 0
    for src in ctx.inputs(node):
        starts.append(c)
        c += ctx.node(src)["shape"][0]
    return starts


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    out, srcs = ctx.var(node), [ctx.var(s) for s in ctx.inputs(node)]
    if ctx.node(node)["op"] == "add":
        return [f"{out} = {srcs[0]}.copy()"] + [f"add_into({out}, {s})" for s in srcs[1:]]
    return [ctx.empty(node)] + [f"concat_forward({s}, {out}, {scalars(c0)})" for s, c0 in zip(srcs, offsets(ctx, node))]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    dout = ctx.grad(node)
    if ctx.node(node)["op"] == "add":
        return [f"add_into({d}, {dout})" for d in dx if d]
    return [f"concat_backward({dout}, {d}, {scalars(c0)})" for d, c0 in zip(dx, offsets(ctx, node)) if d]
