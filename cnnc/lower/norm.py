"""Emitters for batchnorm: batch statistics in training, running statistics in inference.

In training the statistics are the whole step's: each replica sums its slice per channel, the
replicas add their sums up (`replicas.sum`), then each normalizes its slice. A ReLU and a
residual input fused into the batchnorm (passes/fuse_activation.py, passes/fuse_add.py) run in its loops.
"""
from __future__ import annotations

from .context import Context


def count(ctx: Context, node: str) -> str:
    """The values per channel in the whole step: images times pixels."""
    shape = ctx.node(node)["shape"]
    pixels = shape[1] * shape[2] if len(shape) == 3 else 1
    return "total" if pixels == 1 else f"total * {pixels}"


def empty(ctx: Context, node: str) -> str:
    return "EMPTY4" if len(ctx.node(node)["shape"]) == 3 else "EMPTY2"


def forward(ctx: Context, node: str, training: bool) -> list[str]:
    data = ctx.node(node)
    attrs = data["attrs"]
    src, *residual = ctx.inputs(node)  # a second input is a residual fused in
    x, out = ctx.var(src), ctx.var(node)
    gamma, beta = ctx.param(node, "gamma"), ctx.param(node, "beta")
    mean, var = ctx.param(node, "running_mean"), ctx.param(node, "running_var")
    if not training:
        return [ctx.empty(node), f"batchnorm_infer_forward({x}, {gamma}, {beta}, {mean}, {var}, {out}, {attrs['eps']})"]
    channels = data["shape"][0]
    residual = ctx.var(residual[0]) if residual else empty(ctx, node)
    relu = data.get("activation") == "relu"
    return [ctx.empty(node), f"{out}_stats = np.empty((2, {channels}), np.float32)  # mean, 1/std",
            f"{out}_sums = np.empty((2, {channels}))",
            f"batchnorm_sums({x}, {out}_sums)",
            f"if replicas is not None: replicas.sum({out}_sums)  # the whole step's statistics",
            f"batchnorm_train_apply({x}, {out}_sums, {count(ctx, node)}, {gamma}, {beta}, {mean}, {var}, first,",
            f"                      {attrs['eps']}, {attrs['momentum']}, {residual}, {relu}, {out}, {out}_stats)"]


def overwrites(ctx: Context, node: str, index: int) -> bool:
    """The backward can write both its input's and its residual's gradient instead of adding to them."""
    return True


def backward(ctx: Context, node: str, dx: list[str | None], fresh: list[bool]) -> list[str]:
    """`fresh[k]`: dx[k] is the first gradient written into its buffer: written, not added to."""
    data = ctx.node(node)
    src = ctx.inputs(node)[0]
    x, out, dout = ctx.var(src), ctx.var(node), ctx.grad(node)
    relu = data.get("activation") == "relu"
    dresidual = dx[1] if len(dx) > 1 and dx[1] else empty(ctx, node)
    return [f"{out}_dsums = np.empty((2, {data['shape'][0]}))",
            f"batchnorm_grad_sums({x}, {out}, {dout}, {out}_stats, {relu}, {out}_dsums,",
            f"                    {ctx.param_grad(node, 'gamma')}, {ctx.param_grad(node, 'beta')})",
            f"if replicas is not None: replicas.sum({out}_dsums)",
            f"batchnorm_backward_apply({x}, {out}, {dout}, {out}_stats, {ctx.param(node, 'gamma')}, {out}_dsums,",
            f"                         {count(ctx, node)}, {relu}, {dx[0] or empty(ctx, src)}, {dresidual},",
            f"                         {not fresh[0]}, {not (len(fresh) > 1 and fresh[1])})"]
