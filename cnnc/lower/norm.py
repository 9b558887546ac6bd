"""Emitters for batchnorm: batch statistics in training, running statistics in inference."""
from __future__ import annotations

from .context import Context



def forward(ctx: Context, node: str, training: bool) -> list[str]:
    attrs = ctx.node(node)["attrs"]
    (src,) = ctx.inputs(node)
    x, out = ctx.var(src), ctx.var(node)
    gamma, beta = ctx.param(node, "gamma"), ctx.param(node, "beta")
    mean, var = ctx.param(node, "running_mean"), ctx.param(node, "running_var")
    if not training:
        return [ctx.empty(node), f"batchnorm_infer_forward({x}, {gamma}, {beta}, {mean}, {var}, {out}, {attrs['eps']})"]
    channels = ctx.node(node)["shape"][0]
    return [ctx.empty(node), ctx.empty(node, "_xhat"), f"{out}_invstd = np.empty({channels}, np.float32)",
            f"batchnorm_train_forward({x}, {gamma}, {beta}, {mean}, {var}, {out}, {out}_xhat, {out}_invstd,",
            f"                        {attrs['eps']}, {attrs['momentum']})"]


def backward(ctx: Context, node: str, dx: list[str | None]) -> list[str]:
    out = ctx.var(node)
    return [f"batchnorm_backward({ctx.grad(node)}, {out}_xhat, {ctx.param(node, 'gamma')}, {out}_invstd, {dx[0]},",
            f"                   {ctx.param_grad(node, 'gamma')}, {ctx.param_grad(node, 'beta')})"]
