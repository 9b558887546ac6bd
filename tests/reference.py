"""An independent reference: the parsed graph run op by op in PyTorch (autograd for gradients).

It reads only the parsed graph (ops, attributes, resolved pads) and the parameter values, and
uses PyTorch's own operators, so it shares no code with cnnc's lowering or kernels.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F

from cnnc.graph import inputs


def _pad(x, pads, value=0.0):
    top, bottom, left, right = pads
    return F.pad(x, (left, right, top, bottom), value=value)


def _ceil_extra(x, attrs, pads, out_shape):
    """(bottom, right): what a ceil-mode window hanging past the padding needs added to be whole."""
    (kh, kw), (sh, sw) = attrs["size"], attrs["stride"]
    top, bottom, left, right = pads
    return (max((out_shape[1] - 1) * sh + kh - (x.shape[2] + top + bottom), 0),
            max((out_shape[2] - 1) * sw + kw - (x.shape[3] + left + right), 0))


def _avgpool(x, attrs, pads, out_shape):
    """Average over the real elements of each window (PyTorch's count_include_pad=False, any padding),
    or over the padded input's (count_pad, as count_include_pad=True); ceil windows clipped to it."""
    kh, kw = attrs["size"]
    bottom, right = _ceil_extra(x, attrs, pads, out_shape)
    extra = (0, bottom, 0, right)
    total = F.avg_pool2d(_pad(_pad(x, pads), extra), (kh, kw), attrs["stride"]) * (kh * kw)
    ones = torch.ones_like(x[:1, :1])
    ones = _pad(ones, pads, 1.0 if attrs.get("count_pad") else 0.0)
    count = F.avg_pool2d(_pad(ones, extra), (kh, kw), attrs["stride"]) * (kh * kw)
    return total / count


def _maxpool(x, attrs, pads, out_shape):
    bottom, right = _ceil_extra(x, attrs, pads, out_shape)
    padded = _pad(_pad(x, pads, float("-inf")), (0, bottom, 0, right), float("-inf"))
    return F.max_pool2d(padded, attrs["size"], attrs["stride"])


def run_layer(op, attrs, data, xs, p, training):
    x = xs[0] if xs else None
    if op == "conv":
        return F.conv2d(_pad(x, data["pads"]), p["weight"], p.get("bias"), stride=attrs["stride"],
                        dilation=attrs["dilation"], groups=attrs["groups"])
    if op == "maxpool":
        return _maxpool(x, attrs, data["pads"], data["shape"])
    if op == "avgpool":
        return _avgpool(x, attrs, data["pads"], data["shape"])
    if op == "convtranspose":
        return F.conv_transpose2d(x, p["weight"], p.get("bias"), attrs["stride"], attrs["padding"],
                                  attrs["output_padding"])
    if op == "upsample":
        align = {"align_corners": False} if attrs["mode"] == "bilinear" else {}
        return F.interpolate(x, scale_factor=attrs["factor"], mode=attrs["mode"], **align)
    if op == "globalavgpool":
        return x.mean(dim=(2, 3), keepdim=True)
    if op == "batchnorm":
        return F.batch_norm(x, p["running_mean"], p["running_var"], p["gamma"], p["beta"], training=training,
                            momentum=attrs["momentum"], eps=attrs["eps"])
    if op == "dense":
        return F.linear(x, p["weight"], p.get("bias"))
    if op == "flatten":
        return x.flatten(1)
    if op == "add":
        return sum(xs[1:], xs[0])
    if op == "concat":
        return torch.cat(xs, dim=1)
    if op == "softmax":
        return F.softmax(x, dim=1 if attrs.get("axis") == "channels" else -1)
    if op == "dropout":
        assert not training or attrs["rate"] == 0, "the reference cannot reproduce cnnc's dropout masks"
        return x
    return {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[op](x)


def torch_params(params: dict[str, np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    """layer -> kind -> tensor; trainable ones require grad, running statistics are copies."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in params.items():
        layer, kind = name.rsplit(".", 1)
        t = torch.tensor(np.array(value, dtype=np.float64 if value.dtype == np.float64 else np.float32))
        t.requires_grad_(kind not in ("running_mean", "running_var"))
        layers.setdefault(layer, {})[kind] = t
    return layers


def run(g: nx.DiGraph, params: dict[str, np.ndarray], x: np.ndarray, training: bool):
    """The network's output for x, and the torch parameters it used."""
    p = torch_params(params)
    values = {}
    for node in nx.topological_sort(g):
        data = g.nodes[node]
        if data["op"] == "input":
            values[node] = torch.tensor(x)
            continue
        xs = [values[s] for s in inputs(g, node)]
        values[node] = run_layer(data["op"], data["attrs"], data, xs, p.get(node, {}), training)
    return values[g.graph["output"]], p


def loss_and_grads(g: nx.DiGraph, params, x, y):
    """Training-mode loss (cross-entropy as the contract defines it) and gradients by autograd."""
    out, p = run(g, params, x, training=True)
    labels = torch.tensor(y, dtype=torch.int64)
    if g.nodes[g.graph["output"]]["op"] == "softmax":
        loss = F.nll_loss(torch.log(out), labels)
    else:
        loss = F.cross_entropy(out, labels)
    loss.backward()
    grads = {f"{layer}.{kind}": t.grad.numpy() for layer, kinds in p.items() for kind, t in kinds.items()
             if t.requires_grad}
    running = {f"{layer}.{kind}": t.numpy() for layer, kinds in p.items() for kind, t in kinds.items()
               if not t.requires_grad}
    return float(loss.detach()), grads, running


def forward(g: nx.DiGraph, params, x) -> np.ndarray:
    with torch.no_grad():
        out, _ = run(g, params, x, training=False)
    return out.numpy()
