"""Peak memory of a compiled model per batch size, read from its optimized graphs, and the check
against the memory there is (`--max-memory`, else what /proc/meminfo and the cgroup leave free).

The generated module (cnnc/lower/) allocates one float32 array per node of the graph and keeps
every one until the call returns; training adds a gradient per node that needs one, and a few ops
keep extra arrays (max pooling's argmax, dropout's mask).
Convolutions take a workspace per batch slice (cnnc/kernels/conv.py sizes it by its chunks).
Smaller temporaries (folded batchnorm weights, the kernels' own small buffers) are covered by a
margin of SLACK. Parameters, their gradients and the optimizer's state come on top, once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from . import lanes
from .diagnostics import ModelError
from .graph import inputs
from .kernels.conv import COLS_ELEMS, MIN_COLUMNS  # the chunk sizes the workspaces follow
from .kernels.depthwise import SMALL_PLANE, SMALL_PLANE_IMAGES
from .kernels.direct import RUN, runs_up
from .kernels.winograd import WINOGRAD4_TILES, WINOGRAD_TILES
from .lower.conv import (depthwise_applies, direct_applies, direct_forward_applies, winograd_applies,
                         winograd_backward_applies)
from .lower.program import needs_grad
from .ops import effective_size
from .shapes import show

FLOAT = 4  # bytes of a float32 (int32 for max pooling's argmax too)
LINE = 16  # float32s in 64 bytes, where kernels/aligned.py starts each row of an aligned array
ADDRESSABLE = 2**62  # more than any machine has: a limit for when none is known
MARGIN = 0.9  # of the available memory, left for Python, NumPy, Numba and the data set
EVAL_BATCH = 256  # what `eval`, `predict` and the test split of `train` run at, at most
SLACK = 1.1  # on each call's arrays: the kernels' small temporaries and folded weights, not itemized
# Inference runs a lane's images through the network in groups (Network.forward) whose largest
# activation is at most GROUP_BYTES, a core's L2: then a layer reads what the one before it wrote
# from cache, not from memory. forward_group is at least GROUP_MIN_IMAGES (lanes.in_groups cuts a
# slice into equal groups of at most that many): smaller groups lose more on the products of small
# planes and the Winograd chunks than the cache gives. A network with depthwise layers runs whole
# slices: on small planes that kernel's vectors run over the images (kernels/depthwise.py).
# Batch 256 on two lanes, one process, ms (docs/performance.md, 2026-12-01): resnet20 60.6 in
# groups of 12, 61.1 of 16, 66.0 of 32; vgg_small 32.1 (8), 29.2 (16), 30.6 (32), 31.9 whole
# slices; resnet_tiny 16.1, 15.5, 15.5, 20.3; lenet5 2.53 (16), 2.37 (64), 2.35; mobilenet_v1
# 102.7 (16), 95.9 (32), 93.0.
GROUP_BYTES = 1 << 20
GROUP_MIN_IMAGES = 16


@dataclass
class Tensor:
    """One array the model allocates per call: its name and bytes for one image."""

    name: str
    shape: tuple
    bytes_per_image: int
    node: str


@dataclass
class Estimate:
    """What one call of forward (or loss_and_grads) allocates: per-image tensors, the convolution
    workspace (a function of the slice size) and the fixed parameter memory."""

    mode: str  # "inference" or "training"
    tensors: list[Tensor]
    fixed: int
    workspaces: list  # (node, callable slice size -> bytes)
    locs: dict = field(default_factory=dict)

    def bytes(self, batch: int) -> int:
        """Peak bytes of one call at this batch size, parameters included."""
        activations = batch * sum(t.bytes_per_image for t in self.tensors)
        parts = lanes.slices(batch, lanes.lane_count())
        slice_size = max(p.stop - p.start for p in parts)
        workspace = max((ws(slice_size) for _, ws in self.workspaces), default=0)
        return self.fixed + math.ceil(SLACK * (activations + len(parts) * workspace))

    def largest(self, count: int = 3) -> list[Tensor]:
        return sorted(self.tensors, key=lambda t: -t.bytes_per_image)[:count]

    def max_batch(self, limit: int, at_most: int) -> int:
        """The largest batch (up to `at_most`) that fits in `limit` bytes; 0 when none does."""
        low, high = 0, at_most
        while low < high:
            mid = (low + high + 1) // 2
            if self.bytes(mid) <= limit:
                low = mid
            else:
                high = mid - 1
        return low


def estimate(g: nx.DiGraph, layout, mode: str, optimizer: str = "sgd") -> Estimate:
    """The memory of one call of the function lowered from `g` ("inference": forward,
    "training": loss_and_grads, which also needs gradients and the optimizer's state)."""
    training = mode == "training"
    tensors = [Tensor("the input batch", input_shape(g), elements(input_shape(g)) * FLOAT, g.graph["input"])]
    for node in nx.topological_sort(g):
        tensors += node_tensors(g, node, training)
    workspaces = [(n, conv_workspace(g, n, training)) for n in g if g.nodes[n]["op"] == "conv"]
    workspaces += [(n, conv_transpose_workspace(g, n)) for n in g if g.nodes[n]["op"] == "convtranspose"]
    fixed = layout.size * FLOAT
    if training:
        tensors += gradient_tensors(g, layout)
        copies = {"sgd": 3, "adam": 4, "adamw": 5}[optimizer]  # gradients, state and scratch vectors
        fixed += layout.trainable * FLOAT * (copies + lanes.lane_count() - 1)
    return Estimate(mode, tensors, fixed, workspaces, {n: d.get("loc") for n, d in g.nodes(data=True)})


def input_shape(g: nx.DiGraph) -> tuple:
    return g.nodes[g.graph["input"]]["shape"]


def elements(shape) -> int:
    return math.prod(shape)


def node_tensors(g: nx.DiGraph, node: str, training: bool) -> list[Tensor]:
    """The node's output and the extra arrays its op keeps (see the emitters in cnnc/lower/)."""
    data = g.nodes[node]
    op, shape = data["op"], data["shape"]
    size = elements(shape) * FLOAT
    if op == "dropout" and not training:
        return []  # passes its input through
    out = [Tensor(node, shape, size, node)]
    extra = {"maxpool": "argmax", "dropout": "mask"}.get(op)
    if extra:
        out.append(Tensor(f"{node} ({extra})", shape, size, node))
    if node == g.graph["output"] and (len(shape) == 3 or training):
        out.append(Tensor(f"{node} (copy)", shape, size, node))  # NCHW result, or the loss's probabilities
    return out


def gradient_tensors(g: nx.DiGraph, layout) -> list[Tensor]:
    needed = needs_grad(g, layout) | {g.graph["output"]}
    return [Tensor(f"gradient of {n}", g.nodes[n]["shape"], elements(g.nodes[n]["shape"]) * FLOAT, n)
            for n in nx.topological_sort(g) if n in needed]


def aligned_floats(rows: int, size: int) -> int:
    """The float32s of kernels/aligned.py's aligned_rows(rows, size, float32): each row rounded up to
    64 bytes, and a line of slack."""
    return rows * -(-size // LINE) * LINE + LINE


def conv_workspace(g: nx.DiGraph, node: str, training: bool):
    """bytes(slice size) of the largest buffers a kernel of this convolution allocates:
    conv2d_forward/backward (im2col), conv3x3_forward/backward (Winograd), direct_forward/backward or
    depthwise_forward/backward (a plane), as lower/conv.py picks."""
    data = g.nodes[node]
    c, h, w = g.nodes[inputs(g, node)[0]]["shape"]  # a second input is a residual fused in
    f, oh, ow = data["shape"]
    kh, kw = data["attrs"]["size"]
    ekh, ekw = effective_size(data["attrs"])
    sh, sw = data["attrs"]["stride"]
    hph, wph = oh + (ekh - 1) // sh, ow + (ekw - 1) // sw  # a phase of the input, as the depthwise and direct kernels cut it
    if depthwise_applies(c, data["attrs"]):  # a padded plane's phases (and their gradient), a wide plane, float64 sums
        planes = FLOAT * (2 * sh * sw * (hph + 1) * wph + aligned_floats(1, oh * wph))

        def depthwise(n: int) -> int:  # small planes of many images: the same for a channel's planes, the batch innermost
            across = n * planes if oh * ow <= SMALL_PLANE and n >= SMALL_PLANE_IMAGES else 0
            return max(planes, across) + 8 * f * (kh * kw + 1)
        return depthwise
    phases = sh * sw * (hph + 1) * wph  # one plane's
    # the forward's: the phases with the slack their last run of sums reads, eight wide output planes
    direct_forward_bytes = FLOAT * (c * (phases + RUN) + aligned_floats(8, runs_up(oh * wph)))
    if direct_applies(c, data):  # the backward: the phases, the output gradient's wide planes, and at stride 1
        # their padded copy, eight of the input gradient's wide planes and the flipped filters, at a stride
        # the input gradient's phases
        if (sh, sw) == (1, 1):
            dx_bytes = (f * ((h + ekh) * (w + ekw - 1) + RUN) + aligned_floats(8, runs_up(h * (w + ekw - 1)))
                        + c * f * kh * kw)
        else:  # counted even for a first layer, whose backward needs no dx
            dx_bytes = aligned_floats(c, phases)
        backward_bytes = FLOAT * (aligned_floats(c, phases) + aligned_floats(f, oh * wph) + dx_bytes)
        return lambda n: backward_bytes if training else direct_forward_bytes
    hp, ld = -(-((oh - 1) * sh + ekh) // sh), -(-((ow - 1) * sw + ekw) // sw)  # a stride phase of the input
    rows = c * kh * kw
    groups = data["attrs"]["groups"]

    def im2col(n: int) -> int:
        nb = max(1, min(n, max(COLS_ELEMS // max(1, rows * oh * ld), -(-MIN_COLUMNS // max(1, oh * ld)))))
        return FLOAT * (c * nb * sh * sw * (hp + 1) * ld + rows * nb * oh * ld + f * nb * oh * ld
                        + rows * f // groups ** 2)

    # Winograd's two tile sizes (kernels/winograd.py): (outputs a tile side, transformed planes, tiles a chunk)
    tilings = ((2, 16, WINOGRAD_TILES), (4, 36, WINOGRAD4_TILES))

    def padded_image(m: int, rows: int, cols: int, channels: int) -> int:  # the input transform's channels-innermost copy
        return FLOAT * (m * -(-rows // m) + 2) * (m * -(-cols // m) + 2) * channels

    def winograd(n: int) -> int:
        sizes = []
        for m, planes, chunk in tilings:
            tiles = -(-oh // m) * -(-ow // m)
            nb = max(1, min(n, chunk // tiles))
            sizes.append(FLOAT * planes * (c * f + (c + f) * nb * tiles) + padded_image(m, oh, ow, c))
        return max(sizes)

    def winograd_backward(n: int) -> int:
        sizes = []
        for m, planes, chunk in tilings:
            tiles, dx_tiles = -(-oh // m) * -(-ow // m), -(-h // m) * -(-w // m)
            nb = max(1, min(n, chunk // max(tiles, dx_tiles)))
            sizes.append(FLOAT * (planes * (2 * c * f + (c + f) * nb * (tiles + dx_tiles)) + f * nb * oh * ow + c * f * 10)
                         + max(padded_image(m, oh, ow, c), padded_image(m, h, w, f)))
        return max(sizes)

    # 1x1, nothing padded before the input (kernels/conv.py: _pointwise): one product straight into
    # the output, on a subsampled copy of the input at a stride (and of its gradient), whole batch
    pointwise = ((kh, kw) == (1, 1) and data["pads"][0] == data["pads"][2] == 0
                 and (oh, ow) == ((h - 1) // sh + 1, (w - 1) // sw + 1))
    copy = FLOAT * oh * ow * c if sh * sw > 1 else 0  # bytes an image of the subsampled input
    forward = (winograd if winograd_applies(c, data) else (lambda n: direct_forward_bytes)
               if direct_forward_applies(c, data) else (lambda n: n * copy) if pointwise else im2col)
    if not training:
        return forward
    def pointwise_backward(n: int) -> int:  # the output gradient and one group's input gradient, whole batch
        return FLOAT * n * oh * ow * (f + c // groups) + FLOAT * c * f // groups + 2 * n * copy

    backward = winograd_backward if winograd_backward_applies(c, data) else pointwise_backward if pointwise else im2col
    return lambda n: max(forward(n), backward(n))


def conv_transpose_workspace(g: nx.DiGraph, node: str):
    """bytes(slice size) of the buffers of kernels/conv.py's convtranspose_forward/backward: those of the im2col convolution
    from its output back to its input (its forward is that convolution's input gradient), and
    the output gradient's ReLU-masked copy."""
    data = g.nodes[node]
    f, h, w = g.nodes[inputs(g, node)[0]]["shape"]  # the convolution's output is our input
    c, oh, ow = data["shape"]
    kh, kw = data["attrs"]["size"]
    sh, sw = data["attrs"]["stride"]
    hp, ld = -(-((h - 1) * sh + kh) // sh), -(-((w - 1) * sw + kw) // sw)
    rows = c * kh * kw

    def im2col(n: int) -> int:
        nb = max(1, min(n, max(COLS_ELEMS // max(1, rows * h * ld), -(-MIN_COLUMNS // max(1, h * ld)))))
        masked = c * n * oh * ow if data.get("activation") == "relu" else 0
        return FLOAT * (c * nb * sh * sw * (hp + 1) * ld + rows * nb * h * ld + f * nb * h * ld + rows * f + masked)

    return im2col


# ---------------------------------------------------------------------------------------------
# The limit and the check


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, or less under a cgroup limit."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit.isdigit() and used.isdigit():
            found.append(max(int(limit) - int(used), 0))
    except OSError:
        pass
    return min(found) if found else None


def default_limit() -> int | None:
    """The memory a command may use when --max-memory is not given: most of what is available."""
    free = available_memory()
    return None if free is None else int(free * MARGIN)


UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """`8G`, `512M`, `1.5GiB`, `1000000` (bytes) -> bytes; ValueError otherwise."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in UNITS else ""
    number = float(t[: len(t) - len(unit)])
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(text)
    return int(number * UNITS[unit])


def human(size: int | float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{int(size)} bytes"


@dataclass(frozen=True)
class Budget:
    """What a command will run at: the batch, training or inference, and the memory it may use
    (None: no limit is known, nothing is checked)."""

    limit: int | None
    batch: int = 1
    mode: str = "inference"
    optimizer: str = "sgd"
    flag: str = "--batch"  # how the user sets the batch, for the hint
    stated: bool = False  # the limit is the user's --max-memory, not what is available


def check(est: Estimate, budget: Budget) -> None:
    """A ModelError at the largest tensor's layer when the batch does not fit in the limit."""
    if budget.limit is None:
        return
    needed = est.bytes(budget.batch)
    if needed <= budget.limit:
        return
    biggest = est.largest()
    tensors = ", ".join(f"{t.name} {show(t.shape)} ({human(t.bytes_per_image)} an image)" for t in biggest)
    fits = est.max_batch(budget.limit, budget.batch - 1) if budget.batch > 1 else 0
    if fits:
        hint = f"batch {fits} fits: {budget.flag} {fits}; or raise the limit with --max-memory"
    else:
        hint = (f"even batch 1 needs {human(est.bytes(1))}; make the largest layers smaller "
                "(or raise the limit with --max-memory)")
    what = "training" if budget.mode == "training" else "inference"
    limit = f"--max-memory is {human(budget.limit)}" if budget.stated else f"{human(budget.limit)} is available"
    raise ModelError(f"{what} at batch {budget.batch} needs about {human(needed)} but {limit}; "
                     f"the largest tensors: {tensors}; "
                     f"parameters{' and optimizer state' if budget.mode == 'training' else ''}: "
                     f"{human(est.fixed)}",
                     est.locs.get(biggest[0].node), hint)


def forward_group(est: Estimate, g: nx.DiGraph) -> int | None:
    """The images a lane runs through the inference forward of graph g at a time, None for all of
    its slice (see GROUP_BYTES)."""
    if any(data["op"] == "conv" and depthwise_applies(g.nodes[inputs(g, node)[0]]["shape"][0], data["attrs"])
           for node, data in g.nodes(data=True)):
        return None
    return max(GROUP_MIN_IMAGES, GROUP_BYTES // max(1, est.largest(1)[0].bytes_per_image))


def inference_batch(est: Estimate, limit: int | None) -> int:
    """The batch that `eval`, `predict` and the test split run at: EVAL_BATCH, or less to fit."""
    return EVAL_BATCH if limit is None else max(1, est.max_batch(limit, EVAL_BATCH))
