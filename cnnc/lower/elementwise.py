"""Emitters for relu, sigmoid, tanh and dropout, forward and backward side by side."""
from __future__ import annotations

from .context import Context



def forward(ctx: Context, node: str, training: bool) -> list[str]:
    op = ctx.node(node)["op"]
    (src,) = ctx.inputs(node)
    x, out = ctx.var(src), ctx.var(node)
    if op == "dropout" and not training:
        return [f"{out} = {x}  # dropout passes values through in inference"]
    if op == "dropout":
        rate = ctx.node(node)["attrs"]["rate"]
        shape = ctx.node(node)["shape"]
        # seen as (C, n, H*W): the kernel keys each image's mask by its index in the whole step
        planes = f"({shape[0]}, n, {shape[1] * shape[2]})" if len(shape) == 3 else f"(1, n, {shape[0]})"
        views = ", ".join(f"{a}.reshape({planes})" for a in (x, out, f"{out}_mask"))
        return [ctx.empty(node), ctx.empty(node, "_mask"),
                f"dropout_forward({views}, {rate}, seed + {ctx.seeds[node]}, start)"]
    return [ctx.empty(node), f"{op}_forward({x}, {out})"]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    op = ctx.node(node)["op"]
    out, dout = ctx.var(node), ctx.grad(node)
    if op == "dropout":
        return [f"dropout_backward({out}_mask, {dout}, {dx[0]})"]
    return [f"{op}_backward({out}, {dout}, {dx[0]})"]
