"""cnnc.shapes: one rule per op, the padding modes against PyTorch's output sizes, `pads`,
parameter shapes and FLOPs."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cnnc import ops
from cnnc.diagnostics import ModelError
from cnnc.frontend import check_source
from cnnc.expand import expand
from cnnc.graph import build_graph
from cnnc.shapes import infer_shapes, layer_flops, parameter_shapes
from cnnc.syntax import parse


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny convolutions run far faster on one thread than on a pool fighting for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def last_shape(*lines: str) -> tuple:
    g = check_source("\n".join(lines) + "\n")
    return g.nodes[g.graph["output"]]["shape"]


# -- one rule per op --------------------------------------------------------------------------

RULES = [
    ("input", ["input 3x4x5"], (3, 4, 5)),
    ("conv", ["input 1x28x28", "conv filters=6 size=5"], (6, 24, 24)),
    ("maxpool", ["input 6x28x28", "maxpool size=2"], (6, 14, 14)),
    ("maxpool", ["input 6x28x28", "maxpool size=2 stride=1"], (6, 27, 27)),
    ("avgpool", ["input 2x7x7", "avgpool size=3 stride=2"], (2, 3, 3)),
    ("globalavgpool", ["input 5x7x3", "globalavgpool"], (5, 1, 1)),
    ("flatten", ["input 3x4x5", "flatten"], (60,)),
    ("flatten", ["input 3x4x5", "flatten", "flatten"], (60,)),
    ("dense", ["input 3x4x5", "flatten", "dense units=7"], (7,)),
    ("add", ["input 3x4x5", "a: relu", "b: tanh(input1)", "add(a, b, input1)"], (3, 4, 5)),
    ("add", ["input 3x4x5", "a: flatten", "b: dense units=4", "c: dense(a) units=4", "add(b, c)"], (4,)),
    ("concat", ["input 3x4x5", "a: conv filters=2 size=1", "b: conv(input1) filters=5 size=1", "concat(a, input1, b)"],
     (10, 4, 5)),
    ("upsample", ["input 3x4x5", "upsample factor=2"], (3, 8, 10)),
    ("upsample", ["input 3x4x5", "upsample factor=3x1 mode=bilinear"], (3, 12, 5)),
    ("convtranspose", ["input 3x4x5", "convtranspose filters=2 size=2 stride=2"], (2, 8, 10)),
    ("convtranspose", ["input 3x4x5", "convtranspose filters=2 size=3 stride=2 padding=1 output_padding=1"],
     (2, 8, 10)),
] + [(op, ["input 3x4x5", op], (3, 4, 5)) for op in ("relu", "sigmoid", "tanh", "softmax", "dropout", "batchnorm")] \
  + [(op, ["input 3x4x5", "flatten", op], (60,)) for op in ("relu", "sigmoid", "tanh", "softmax", "dropout",
                                                              "batchnorm")]


@pytest.mark.parametrize("op, lines, shape", RULES, ids=[r[0] for r in RULES])
def test_rule(op, lines, shape):
    assert last_shape(*lines) == shape


def test_every_op_has_a_rule_tested():
    assert {op for op, _, _ in RULES} == set(ops.OPS)


def test_infer_shapes_does_not_touch_its_input():
    g = build_graph(expand(parse("input 1x8x8\nconv filters=2 size=3 padding=same\n")))
    checked = infer_shapes(g)
    assert "shape" not in g.nodes["conv1"] and "pads" not in g.nodes["conv1"]
    assert checked.nodes["conv1"]["shape"] == (2, 8, 8)


# -- padding, strides and non-square kernels against PyTorch ----------------------------------

INPUTS = [(7, 10), (6, 6), (5, 13)]
KERNELS = [(3, 3), (2, 1), (3, 5), (4, 4)]
STRIDES = [(1, 1), (2, 2), (3, 2)]
PADDINGS = ["valid", "same", "full", "1", "2x0"]


def text(pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def expected_pads(padding: str, n: tuple, k: tuple, s: tuple) -> tuple[int, int, int, int]:
    """The contract's formulas, per axis, as (top, bottom, left, right)."""
    def axis(i):
        if padding == "valid":
            return 0, 0
        if padding == "full":
            return k[i] - 1, k[i] - 1
        if padding == "same":
            total = max((math.ceil(n[i] / s[i]) - 1) * s[i] + k[i] - n[i], 0)
            return total // 2, total - total // 2
        p = [int(v) for v in padding.split("x")] * (2 if "x" not in padding else 1)
        return p[i], p[i]
    return axis(0) + axis(1)


def cases(padding: str, pooling: bool):
    """(n, k, s) for one padding mode, leaving out the errors (tested below)."""
    for n, k, s in itertools.product(INPUTS, KERNELS, STRIDES):
        top, bottom, left, right = expected_pads(padding, n, k, s)
        if n[0] + top + bottom < k[0] or n[1] + left + right < k[1]:
            continue
        if pooling and (max(top, bottom) >= k[0] or max(left, right) >= k[1]):
            continue  # windows of padding only
        yield n, k, s


def torch_padding(padding: str, k, s):
    """PyTorch's own spelling of the mode where it has one, else None."""
    if padding == "valid":
        return 0
    if padding == "full":
        return (k[0] - 1, k[1] - 1)
    if padding == "same":
        return "same" if s == (1, 1) else None
    p = [int(v) for v in padding.split("x")]
    return tuple(p * 2) if len(p) == 1 else tuple(p)


# One test per mode, looping over sizes: hundreds of tiny test items would cost more than the checks.
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("padding", PADDINGS)
def test_conv_output_size_matches_torch(padding):
    for n, k, s in cases(padding, pooling=False):
        case = f"input {n} kernel {k} stride {s}"
        g = check_source(f"input 2x{n[0]}x{n[1]}\nconv filters=3 size={text(k)} stride={text(s)} padding={padding}\n")
        conv = g.nodes["conv1"]
        pads = expected_pads(padding, n, k, s)
        assert conv["pads"] == pads, case
        x, w = torch.zeros(1, 2, *n), torch.zeros(3, 2, *k)
        native = torch_padding(padding, k, s)
        if native is not None:
            assert tuple(F.conv2d(x, w, stride=s, padding=native).shape[1:]) == conv["shape"], case
        top, bottom, left, right = pads
        assert tuple(F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=s).shape[1:]) == conv["shape"], case
        if padding == "same":
            assert conv["shape"][1:] == (math.ceil(n[0] / s[0]), math.ceil(n[1] / s[1])), case


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_pool_output_size_matches_torch(op, padding):
    reference = F.max_pool2d if op == "maxpool" else F.avg_pool2d
    for n, k, s in cases(padding, pooling=True):
        case = f"input {n} window {k} stride {s}"
        g = check_source(f"input 2x{n[0]}x{n[1]}\n{op} size={text(k)} stride={text(s)} padding={padding}\n")
        pool = g.nodes[f"{op}1"]
        top, bottom, left, right = pool["pads"]
        assert pool["pads"] == expected_pads(padding, n, k, s), case
        x = F.pad(torch.zeros(1, 2, *n), (left, right, top, bottom), value=-math.inf)
        assert tuple(reference(x, k, s).shape[1:]) == pool["shape"], case
        if top == bottom <= k[0] // 2 and left == right <= k[1] // 2:  # where torch pads by itself
            native = reference(torch.zeros(1, 2, *n), k, s, (top, left))
            assert tuple(native.shape[1:]) == pool["shape"], case


def test_every_mode_is_checked_on_many_sizes():
    assert all(len(list(cases(p, pooling=True))) >= 10 for p in PADDINGS)


@pytest.mark.parametrize("n, k, s, pads", [
    (5, 2, 1, (0, 1)),  # the odd zero goes after
    (7, 4, 2, (1, 2)),
    (6, 3, 2, (0, 1)),
    (6, 1, 3, (0, 0)),
    (4, 5, 1, (2, 2)),  # kernel larger than the input: same still pads it to ceil(n / s)
])
def test_same_padding_puts_the_extra_zero_at_bottom_and_right(n, k, s, pads):
    g = check_source(f"input 1x{n}x{n}\nconv filters=1 size={k} stride={s} padding=same\n")
    assert g.nodes["conv1"]["pads"] == pads + pads
    assert g.nodes["conv1"]["shape"] == (1, math.ceil(n / s), math.ceil(n / s))


def test_padding_per_axis():
    g = check_source("input 1x6x9\nconv filters=1 size=3x5 padding=same\nconv filters=1 size=2x4 padding=full\n"
                     "conv filters=1 size=1 padding=3x1\n")
    assert [g.nodes[c]["pads"] for c in ("conv1", "conv2", "conv3")] == \
        [(1, 1, 2, 2), (1, 1, 3, 3), (3, 3, 1, 1)]
    assert g.nodes["conv3"]["shape"] == (1, 7 + 6, 12 + 2)


@pytest.mark.parametrize("layer", ["conv filters=1 size=5", "conv filters=1 size=2x5", "maxpool size=5",
                                   "avgpool size=1x6 stride=1", "conv filters=1 size=9 padding=1"])
def test_a_window_larger_than_its_padded_input_is_an_error(layer):
    with pytest.raises(ModelError, match="larger than"):
        check_source(f"input 1x4x4\n{layer}\n")


@pytest.mark.parametrize("layer", ["conv filters=1 size=9 padding=same", "conv filters=1 size=9 padding=full",
                                   "maxpool size=4 padding=same"])
def test_same_and_full_fit_any_kernel(layer):
    check_source(f"input 1x4x4\n{layer}\n")


@pytest.mark.parametrize("padding, ok", [("1", True), ("2x1", False), ("1x2", False), ("full", True),
                                         ("same", True)])
def test_pooling_padding_must_be_smaller_than_the_window(padding, ok):
    source = f"input 1x6x6\nmaxpool size=2 padding={padding}\n"
    if ok:
        check_source(source)
    else:
        with pytest.raises(ModelError, match="no real element"):
            check_source(source)


# -- parameters and FLOPs ---------------------------------------------------------------------


def test_parameter_shapes_use_pytorch_layouts():
    g = check_source("input 3x9x9\nc: conv filters=4 size=3x5\nbatchnorm\nconv filters=2 size=1 bias=false\n"
                     "flatten\nd: dense units=5\nbatchnorm\n")
    assert parameter_shapes(g) == {
        "c.weight": (4, 3, 3, 5), "c.bias": (4,),
        "batchnorm1.gamma": (4,), "batchnorm1.beta": (4,), "batchnorm1.running_mean": (4,),
        "batchnorm1.running_var": (4,),
        "conv2.weight": (2, 4, 1, 1),
        "d.weight": (5, 2 * 7 * 5), "d.bias": (5,),
        "batchnorm2.gamma": (5,), "batchnorm2.beta": (5,), "batchnorm2.running_mean": (5,),
        "batchnorm2.running_var": (5,),
    }


@pytest.mark.parametrize("line, node, flops", [
    ("conv filters=4 size=3x2", "conv1", 2 * (4 * 4 * 5) * 3 * 3 * 2),
    ("maxpool size=2", "maxpool1", (3 * 3 * 3) * 4),
    ("globalavgpool", "globalavgpool1", 3 * 6 * 6),
    ("relu", "relu1", 3 * 6 * 6),
])
def test_flops(line, node, flops):
    g = check_source(f"input 3x6x6\n{line}\n")
    assert layer_flops(g, node) == flops


def test_dense_flops():
    g = check_source("input 3x2x2\nflatten\ndense units=5\n")
    assert layer_flops(g, "dense1") == 2 * 5 * 12


# -- the resizing ops and the pooling keys against PyTorch ------------------------------------

def test_convtranspose_output_size_matches_torch():
    for (h, w), k, st, p, op in itertools.product([(1, 1), (4, 7), (5, 3)], [(1, 1), (2, 2), (3, 4)],
                                                  [(1, 1), (2, 2), (3, 2)], [(0, 0), (1, 0), (1, 2)],
                                                  [(0, 0), (1, 0), (2, 1)]):
        if op[0] >= st[0] or op[1] >= st[1]:
            continue
        out = [(n - 1) * s - 2 * pad + kk + o for n, s, pad, kk, o in zip((h, w), st, p, k, op)]
        source = (f"input 2x{h}x{w}\nconvtranspose filters=3 size={text(k)} stride={text(st)} padding={text(p)} "
                  f"output_padding={text(op)}\n")
        if min(out) < 1:
            with pytest.raises(ModelError, match="leaves no output"):
                check_source(source)
            continue
        g = check_source(source)
        native = F.conv_transpose2d(torch.zeros(1, 2, h, w), torch.zeros(2, 3, *k), stride=st, padding=p,
                                    output_padding=op)
        assert tuple(native.shape[1:]) == g.nodes["convtranspose1"]["shape"], source


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_output_size_matches_torch(mode):
    for (h, w), f in itertools.product([(1, 1), (4, 7), (5, 3)], [(1, 1), (2, 2), (3, 3), (2, 3), (1, 4)]):
        g = check_source(f"input 2x{h}x{w}\nupsample factor={text(f)} mode={mode}\n")
        native = F.interpolate(torch.zeros(1, 2, h, w), scale_factor=f, mode=mode)
        assert tuple(native.shape[1:]) == g.nodes["upsample1"]["shape"]


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_ceil_pool_output_size_matches_torch(op):
    reference = F.max_pool2d if op == "maxpool" else F.avg_pool2d
    checked = 0
    for n, k, s in cases("1", pooling=True):
        for padding in ((0, 0), (1, 1), (k[0] // 2, k[1] // 2)):
            if padding[0] >= k[0] or padding[1] >= k[1] or padding[0] > k[0] // 2 or padding[1] > k[1] // 2:
                continue
            g = check_source(f"input 2x{n[0]}x{n[1]}\n{op} size={text(k)} stride={text(s)} padding={text(padding)} "
                             "rounding=ceil\n")
            native = reference(torch.zeros(1, 2, *n), k, s, padding, ceil_mode=True)
            assert tuple(native.shape[1:]) == g.nodes[f"{op}1"]["shape"], (n, k, s, padding)
            checked += 1
    assert checked >= 20


def test_resizing_parameters_use_pytorch_layouts():
    g = check_source("input 3x4x4\nt: convtranspose filters=5 size=2x3 stride=2\nu: convtranspose filters=2 size=1 "
                     "bias=false\nupsample factor=2 mode=bilinear\n")
    assert parameter_shapes(g) == {"t.weight": (3, 5, 2, 3), "t.bias": (5,), "u.weight": (5, 2, 1, 1)}
    module = torch.nn.ConvTranspose2d(3, 5, (2, 3), stride=2)
    assert (tuple(module.weight.shape), tuple(module.bias.shape)) == ((3, 5, 2, 3), (5,))


@pytest.mark.parametrize("line, flops", [
    ("convtranspose filters=4 size=3x2 stride=2", 2 * (3 * 6 * 6) * 4 * 3 * 2),
    ("upsample factor=2", 0),
    ("upsample factor=2x3 mode=bilinear", 6 * 3 * 12 * 18),
    ("avgpool size=3 stride=2 padding=1 rounding=ceil count_pad=true", (3 * 4 * 4) * 9),
])
def test_resizing_flops(line, flops):
    g = check_source(f"input 3x6x6\n{line}\n")
    assert layer_flops(g, g.graph["output"]) == flops


# -- groups and dilation ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("padding", PADDINGS)
def test_dilated_conv_output_size_matches_torch(padding):
    """Padding and output size use the dilated extent (K - 1) * D + 1, as PyTorch's dilation does."""
    for (n, k, s), d in itertools.product(cases(padding, pooling=False), [(2, 2), (3, 1)]):
        extent = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
        pads = expected_pads(padding, n, extent, s)
        if n[0] + pads[0] + pads[1] < extent[0] or n[1] + pads[2] + pads[3] < extent[1]:
            continue
        case = f"input {n} kernel {k} stride {s} dilation {d}"
        g = check_source(f"input 2x{n[0]}x{n[1]}\nconv filters=3 size={text(k)} stride={text(s)} padding={padding} "
                         f"dilation={text(d)}\n")
        assert g.nodes["conv1"]["pads"] == pads, case
        top, bottom, left, right = pads
        x, w = torch.zeros(1, 2, *n), torch.zeros(3, 2, *k)
        assert tuple(F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=s, dilation=d).shape[1:]) == \
            g.nodes["conv1"]["shape"], case
        if padding == "same" and s == (1, 1):
            assert tuple(F.conv2d(x, w, padding="same", dilation=d).shape[1:]) == g.nodes["conv1"]["shape"], case


def test_same_padding_of_a_dilated_kernel_keeps_the_size():
    g = check_source("input 1x9x8\nconv filters=1 size=3 dilation=2 padding=same\n"
                     "conv filters=1 size=3 dilation=4x1 stride=2 padding=same\n")
    assert g.nodes["conv1"]["pads"] == (2, 2, 2, 2) and g.nodes["conv1"]["shape"] == (1, 9, 8)
    assert g.nodes["conv2"]["pads"] == (4, 4, 0, 1) and g.nodes["conv2"]["shape"] == (1, 5, 4)


def test_grouped_and_depthwise_parameters_and_flops():
    g = check_source("input 6x5x5\nd: conv filters=12 size=3 padding=same groups=6\n"
                     "p: conv filters=4 size=1 groups=2 bias=false\ndl: conv filters=4 size=3 dilation=2\n")
    shapes = parameter_shapes(g)
    assert shapes["d.weight"] == (12, 1, 3, 3) and shapes["d.bias"] == (12,)
    assert shapes["p.weight"] == (4, 6, 1, 1)
    assert shapes["dl.weight"] == (4, 4, 3, 3)  # dilation adds no parameters
    assert layer_flops(g, "d") == 2 * (12 * 5 * 5) * 1 * 3 * 3
    assert layer_flops(g, "p") == 2 * (4 * 5 * 5) * 6
    assert layer_flops(g, "dl") == 2 * (4 * 1 * 1) * 4 * 3 * 3


@pytest.mark.parametrize("channels, filters, groups, message", [
    (6, 8, 4, "groups=4 does not divide its 6 input channels"),
    (8, 6, 4, "groups=4 does not divide its 6 filters"),
    (4, 4, 8, "groups=8 does not divide its 4 input channels"),
])
def test_groups_must_divide_channels_and_filters(channels, filters, groups, message):
    with pytest.raises(ModelError, match=message):
        check_source(f"input {channels}x6x6\nconv filters={filters} size=3 groups={groups}\n")
