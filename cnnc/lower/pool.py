"""Emitters for max, average and global average pooling, forward and backward side by side."""
from __future__ import annotations

from .context import Context, scalars


def window(ctx: Context, node: str) -> str:
    """Window size, stride and the top and left padding, as kernel arguments."""
    data = ctx.node(node)
    kh, kw = data["attrs"]["size"]
    sh, sw = data["attrs"]["stride"]
    top, _, left, _ = data["pads"]
    return scalars(kh, kw, sh, sw, top, left)


def average_window(ctx: Context, node: str) -> str:
    """The window, the bottom and right padding too, and whether padding counts in the divisor."""
    data = ctx.node(node)
    _, bottom, _, right = data["pads"]
    return f"{window(ctx, node)}, {scalars(bottom, right, data['attrs']['count_pad'])}"


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    op = ctx.node(node)["op"]
    (src,) = ctx.inputs(node)
    x, out = ctx.var(src), ctx.var(node)
    if op == "maxpool":
        return [ctx.empty(node), ctx.empty(node, "_argmax", "np.int32"),
                f"maxpool_forward({x}, {out}, {out}_argmax, {window(ctx, node)})"]
    if op == "avgpool":
        return [ctx.empty(node), f"avgpool_forward({x}, {out}, {average_window(ctx, node)})"]
    return [ctx.empty(node), f"globalavgpool_forward({x}, {out})"]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    op = ctx.node(node)["op"]
    dout, out = ctx.grad(node), ctx.var(node)
    if op == "maxpool":
        return [f"maxpool_backward({dout}, {out}_argmax, {dx[0]})"]
    if op == "avgpool":
        return [f"avgpool_backward({dout}, {dx[0]}, {average_window(ctx, node)})"]
    return [f"globalavgpool_backward({dout}, {dx[0]})"]
