"""ONNX export checked in onnxruntime, and the `--emit python` module run on its own."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

import cnnc
from cnnc.cli import main
from cnnc.export.onnx import to_onnx
from cnnc.lower.standalone import standalone

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.cnn"))
TEST_MODELS = [Path(__file__).resolve().parent / "models" / f"{name}.cnn" for name in ("encoder_decoder", "pool_rounding")]


def randomized(path, seed):
    return randomize_buffers(cnnc.compile(path, seed=seed), seed)


def randomize_buffers(net, seed):
    """Biases, batchnorm parameters and running statistics random too (they start at 0 and 1)."""
    rng = np.random.default_rng(seed)
    for name, view in net.params.items():
        if name.endswith("running_var"):
            view[...] = rng.uniform(0.5, 2.0, view.shape)
        elif not name.endswith("weight"):
            view[...] = rng.standard_normal(view.shape) * 0.3
    return net


@pytest.mark.parametrize("path", EXAMPLES + TEST_MODELS, ids=lambda p: p.stem)
def test_onnx_export_matches_forward(path):
    net = randomized(path, 11)
    model = to_onnx(net.parsed, dict(net.params))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(12).standard_normal((3,) + net.input_shape).astype(np.float32)
    (onnx_out,) = session.run(None, {"input": x})
    assert np.abs(onnx_out - net.forward(x)).max() < 1e-4


# One layer each: the ONNX nodes of the resizing ops and pooling keys, on odd, nonsquare inputs.
RESIZING_LAYERS = [
    "upsample factor=2", "upsample factor=3", "upsample factor=2x3", "upsample factor=2 mode=bilinear",
    "upsample factor=3 mode=bilinear", "upsample factor=3x2 mode=bilinear",
    "convtranspose filters=3 size=2 stride=2", "convtranspose filters=3 size=3 stride=2 padding=1 output_padding=1",
    "convtranspose filters=2 size=3x2 stride=3x1 padding=1x0 output_padding=2x0 bias=false activation=relu",
    "maxpool size=2 rounding=ceil", "maxpool size=3 stride=3 padding=1 rounding=ceil",
    "avgpool size=3 stride=2 padding=1 rounding=ceil count_pad=true", "avgpool size=2 padding=1 rounding=ceil",
    "avgpool size=3 stride=3 padding=1 rounding=ceil count_pad=true", "avgpool size=3 padding=same count_pad=true",
]


@pytest.mark.parametrize("layer", RESIZING_LAYERS)
def test_onnx_export_of_resizing_layers(layer):
    net = cnnc.compile_source(f"input 2x5x7\n{layer}\n", file="layer.cnn")
    randomize_buffers(net, 17)
    model = to_onnx(net.parsed, dict(net.params))
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # ONNX's own sizes agree with the declared output
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(18).standard_normal((3, 2, 5, 7)).astype(np.float32)
    (onnx_out,) = session.run(None, {"input": x})
    ours = net.forward(x)
    assert onnx_out.shape == ours.shape
    assert np.abs(onnx_out - ours).max() < 1e-5 * max(1.0, np.abs(ours).max())


def test_export_command_writes_a_loadable_file(tmp_path):
    path = EXAMPLES[0]
    net = randomized(path, 13)
    weights = tmp_path / "w.npz"
    np.savez(weights, **dict(net.params))
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--weights", str(weights), "-o", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(14).random((2,) + net.input_shape, dtype=np.float32)
    assert np.abs(session.run(None, {"input": x})[0] - net.forward(x)).max() < 1e-4


def test_export_with_wrong_weights_is_a_user_error(tmp_path, capsys):
    weights = tmp_path / "w.npz"
    np.savez(weights, nothing=np.zeros(3, np.float32))
    assert main(["export", str(EXAMPLES[0]), "--weights", str(weights), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "does not match the model" in capsys.readouterr().err


def test_generated_source_is_deterministic():
    path = Path(__file__).resolve().parent.parent / "examples" / "resnet_tiny.cnn"
    assert cnnc.compile(path).source == cnnc.compile(path, seed=3).source


def test_emitted_module_runs_on_its_own(tmp_path):
    """The file `--emit python` writes imports only numpy and numba, and computes what net.forward does."""
    path = Path(__file__).resolve().parent.parent / "examples" / "resnet_tiny.cnn"
    module = tmp_path / "resnet_kernels.py"
    assert main(["compile", str(path), "--emit", "python", "-o", str(module)]) == 0
    text = module.read_text()
    imports = {line.split()[1].split(".")[0] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"numpy", "numba", "math"}, imports
    net = randomized(path, 15)
    x = np.random.default_rng(16).standard_normal((2,) + net.input_shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "p.npy", net.vector)
    script = ("import sys, numpy as np\nsys.modules.pop('cnnc', None)\nimport resnet_kernels as m\n"
              "assert 'cnnc' not in sys.modules\n"
              "np.save('out.npy', m.forward(np.load('x.npy'), np.load('p.npy')))\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert run.returncode == 0, run.stderr
    assert np.abs(np.load(tmp_path / "out.npy") - net.forward(x)).max() < 1e-5


def test_standalone_keeps_the_model_code():
    net = cnnc.compile(Path(__file__).resolve().parent.parent / "examples" / "lenet5.cnn")
    text = standalone(net.source)
    assert not [line for line in text.splitlines() if line.startswith(("from cnnc", "import cnnc"))]
    assert "def forward(x, P, memo=None):" in text and "def loss_and_grads(x, y, P, G, seed, total=None, start=0, smoothing=0.0, replicas=None):" in text
    assert "# conv1 + relu1: conv+relu filters=6 size=5 padding=same -> 6x28x28" in text


@pytest.mark.parametrize("padding, kernel", [(1, "conv3x3_backward"), (2, "conv3x3_backward"), (3, "conv2d_backward")])
def test_winograd_backward_only_where_the_input_gradient_can_be_one(padding, kernel):
    """The input gradient of a Winograd layer is a Winograd convolution padded by 2 - padding:
    from padding 3 on, the layer's backward must be im2col's."""
    net = cnnc.compile_source(f"input 16x6x6\nconv filters=16 size=3 padding={padding}\nflatten\ndense units=2\n"
                              "loss cross_entropy\n")
    backward = net.source.split("def loss_and_grads")[1]
    assert f"{kernel}(" in backward and "conv3x3_forward(" in backward


GROUPED_DILATED = """
input 16x9x8
a: conv filters=32 size=3 stride=2 padding=same groups=16 activation=relu
b: conv filters=16 size=3 padding=same dilation=2 groups=4 bias=false
batchnorm
c: conv filters=16 size=3 padding=full dilation=1x2 groups=16
flatten
dense units=3
"""


def test_onnx_export_of_groups_and_dilation():
    net = randomize_buffers(cnnc.compile_source(GROUPED_DILATED, seed=17), 17)
    model = to_onnx(net.parsed, dict(net.params))
    attrs = {node.name: {a.name: list(a.ints) or a.i for a in node.attribute} for node in model.graph.node
             if node.op_type == "Conv"}
    assert attrs["a"]["group"] == 16 and attrs["b"]["group"] == 4 and attrs["c"]["group"] == 16
    assert attrs["b"]["dilations"] == [2, 2] and attrs["c"]["dilations"] == [1, 2] and attrs["a"]["dilations"] == [1, 1]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(18).standard_normal((3,) + net.input_shape).astype(np.float32)
    (onnx_out,) = session.run(None, {"input": x})
    assert np.abs(onnx_out - net.forward(x)).max() < 1e-4


def test_kernels_of_groups_and_dilation():
    """groups = channels runs the depthwise kernel; grouped or dilated 3x3 layers never Winograd."""
    net = cnnc.compile_source(GROUPED_DILATED + "loss cross_entropy\n")
    forward, training = net.source.split("def loss_and_grads")
    for part, kernel in ((forward, "forward"), (training, "backward")):
        assert part.count(f"    depthwise_{kernel}(") == 2 and part.count(f"    conv2d_{kernel}(") == 1
    assert "conv3x3_" not in net.source
    assert "# a + a.relu: conv+relu filters=32 size=3 stride=2 padding=same groups=16 -> 32x5x4" in forward
    assert "# b + batchnorm1: conv+batchnorm filters=16 size=3 padding=same groups=4 dilation=2 -> 16x5x4" in forward
