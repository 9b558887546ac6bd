"""The `cnnc` command: compile's summary, `--emit json|dot`, `-o`, `cnnc dot` at both stages, exit
codes; every example compiles; docs/language.md covers the op table."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydot
import pytest

from cnnc import ops
from cnnc.cli import main
from cnnc.export.dot import node_label
from cnnc.frontend import check_file, check_source, optimized
from cnnc.summary import render_summary

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pydot")  # pydot's own pyparsing calls

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.cnn"))
LENET = ROOT / "examples" / "lenet5.cnn"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def dot_nodes(text: str) -> set[str]:
    """The layers drawn, inside the clusters of block uses too."""
    (graph,) = pydot.graph_from_dot_data(text)
    graphs, names = [graph], set()
    while graphs:
        g = graphs.pop()
        names |= {n.get_name().strip('"') for n in g.get_nodes()}
        graphs += g.get_subgraphs()
    return names - {"node", "edge", "graph"}


# -- compile ----------------------------------------------------------------------------------

PARAMETERS = [("lenet5", "61,706"), ("vgg_small", "1,116,970")]


@pytest.mark.parametrize("model, count", PARAMETERS)
def test_the_front_end_summary_counts_parameters(model, count):
    parsed = check_file(ROOT / "examples" / f"{model}.cnn")
    graph, applied = optimized(parsed)
    text = render_summary(parsed, graph, applied)
    assert f"parameters: {count}" in text.splitlines()
    assert text.startswith(f"model {model}")
    assert all(node in text for node in graph)


@pytest.mark.parametrize("model, count", PARAMETERS)
def test_compile_prints_the_summary(model, count, capsys):
    code, out, err = run(capsys, "compile", ROOT / "examples" / f"{model}.cnn")
    assert code == 0, err
    assert f"parameters: {count}" in out.splitlines()
    assert re.search(r"^passes: .*fuse_conv_relu", out, re.M)


def test_summary_rows_of_lenet5():
    parsed = check_file(LENET)
    graph, applied = optimized(parsed)
    rows = {line.split()[0]: line.split()[1:] for line in render_summary(parsed, graph, applied).splitlines()[3:]
            if line.strip() and not line.startswith(("passes", "layers", "parameters", "FLOPs"))}
    assert rows["conv1"] == ["conv+relu", "6x28x28", "156", "239,904"]
    assert rows["dense1"] == ["dense+relu", "120", "48,120", "96,120"]
    assert "relu1" not in rows


def test_summary_and_json_list_layers_in_file_order(capsys):
    path = ROOT / "examples" / "inception_tiny.cnn"
    parsed = check_file(path)
    graph, applied = optimized(parsed)
    table = render_summary(parsed, graph, applied)
    rows = [line.split()[0] for line in table.splitlines()[3:] if line.startswith("  ")]
    _, out, _ = run(capsys, "compile", path, "--emit", "json")
    assert rows == [n["name"] for n in json.loads(out)["nodes"]] == list(graph)
    assert rows.index("m1b") < rows.index("conv5") < rows.index("maxpool2")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_emit_json_is_valid_json(path, capsys):
    code, out, _ = run(capsys, "compile", path, "--emit", "json")
    assert code == 0
    data = json.loads(out)
    names = [n["name"] for n in data["nodes"]]
    assert data["model"]["input"] == names[0] and data["model"]["output"] in names
    for node in data["nodes"]:
        assert set(node["inputs"]) <= set(names[: names.index(node["name"])])  # topological order
        assert node["line"] >= 1 and node["column"] >= 1 and node["shape"]


def test_emit_to_a_file_with_o(tmp_path, capsys):
    code, printed, _ = run(capsys, "compile", LENET, "--emit", "json")
    target = tmp_path / "lenet.json"
    code, out, err = run(capsys, "compile", LENET, "--emit", "json", "-o", target)
    assert code == 0 and out == "" and err == ""
    assert target.read_text() == printed


def test_emit_dot(capsys):
    code, out, _ = run(capsys, "compile", LENET, "--emit", "dot")
    assert code == 0 and "conv1" in dot_nodes(out) and "relu1" not in dot_nodes(out)


# -- dot --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_dot_parses_at_both_stages_and_fusion_shrinks_it(path, capsys):
    code, parsed_dot, _ = run(capsys, "dot", path, "--stage", "parsed")
    before = dot_nodes(parsed_dot)
    assert code == 0 and before == set(check_file(path).nodes)
    for mode in ("inference", "training"):
        code, optimized_dot, _ = run(capsys, "dot", path, "--stage", "optimized", "--mode", mode)
        after = dot_nodes(optimized_dot)
        _, applied = optimized(check_file(path), mode)
        assert code == 0 and after <= before
        assert (len(after) < len(before)) == bool(applied), mode


def test_dot_labels_show_op_keys_shape_and_what_fused(capsys):
    _, out, _ = run(capsys, "dot", LENET)
    assert "filters=6 size=5 padding=same" in out and "6x28x28" in out and "fused relu1" in out


def test_dot_labels_show_the_resizing_keys_that_are_not_defaults():
    g = check_source("input 3x5x5\nt: convtranspose filters=4 size=3 stride=2 padding=1 output_padding=1\n"
                     "u: convtranspose filters=2 size=2 stride=2\nv: upsample factor=2\nw: upsample factor=1x3 "
                     "mode=bilinear\nx: maxpool size=2 rounding=ceil\ny: avgpool size=3 stride=1 padding=1 "
                     "count_pad=true\nz: maxpool size=2\n")
    labels = {node: node_label(node, data) for node, data in g.nodes(data=True)}
    assert "filters=4 size=3 stride=2 padding=1 output_padding=1" in labels["t"]
    assert "filters=2 size=2\n" in labels["u"] and "padding" not in labels["u"]
    assert "factor=2\n" in labels["v"] and "mode" not in labels["v"]
    assert "factor=1x3 mode=bilinear" in labels["w"]
    assert "size=2 rounding=ceil" in labels["x"] and "rounding" not in labels["z"]
    assert "size=3 padding=1 count_pad=true" in labels["y"]
def test_dot_labels_and_summary_show_groups_and_dilation(capsys):
    _, out, _ = run(capsys, "dot", ROOT / "examples" / "mobilenet_v1.cnn")
    assert "filters=64 size=3 stride=2 padding=1 groups=64" in out and "64x16x16" in out
    parsed = check_file(ROOT / "examples" / "mobilenet_v1.cnn")
    text = render_summary(parsed, *optimized(parsed))
    assert "parameters: 3,239,114 (3,217,226 trainable, 21,888 running statistics)" in text.splitlines()
    g = check_file(ROOT / "examples" / "padding_modes.cnn")
    assert "dilation" not in ops.describe("conv", g.nodes["conv1"]["attrs"])  # defaults are left out
    assert ops.describe("conv", {**g.nodes["conv1"]["attrs"], "dilation": (2, 1)}).endswith("dilation=2x1")


def test_dot_to_a_file(tmp_path, capsys):
    target = tmp_path / "g.dot"
    code, out, _ = run(capsys, "dot", LENET, "--stage", "parsed", "-o", target)
    assert code == 0 and out == "" and "relu1" in dot_nodes(target.read_text())


# -- exit codes -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["compile"], ["frobnicate", "x.cnn"], ["compile", "x.cnn", "--emit", "pdf"],
                                  ["dot", "x.cnn", "--stage", "final"], ["compile", "x.cnn", "--bogus"]],
                         ids=["nothing", "no-model", "unknown-command", "bad-emit", "bad-stage", "unknown-flag"])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compile", "dot"])
def test_a_missing_file_is_a_user_error(command, tmp_path, capsys):
    code, out, err = run(capsys, command, tmp_path / "nope.cnn")
    assert code == 1 and out == ""
    assert err.startswith("error: cannot read") and "nope.cnn" in err and "Traceback" not in err


def test_a_folder_is_not_a_model(tmp_path, capsys):
    code, _, err = run(capsys, "compile", tmp_path)
    assert code == 1 and "cannot read" in err


def test_an_unwritable_output_is_a_user_error(tmp_path, capsys):
    code, _, err = run(capsys, "compile", LENET, "--emit", "json", "-o", tmp_path / "no" / "such" / "dir.json")
    assert code == 1 and "cannot write" in err


def test_the_installed_command_on_a_missing_file(tmp_path):
    command = [shutil.which("cnnc")] if shutil.which("cnnc") else [sys.executable, "-m", "cnnc.cli"]
    result = subprocess.run(command + ["compile", str(tmp_path / "nope.cnn")], capture_output=True, text=True)
    assert result.returncode == 1 and "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m_cnnc_is_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cnnc", "compile", str(tmp_path / "nope.cnn")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "cannot read" in result.stderr and "Traceback" not in result.stderr


# -- examples and docs ------------------------------------------------------------------------


def test_there_are_examples_for_the_whole_language():
    text = "\n".join(p.read_text() for p in EXAMPLES)
    assert {p.stem for p in EXAMPLES} >= {"lenet5", "vgg_small", "resnet_tiny", "inception_tiny"}
    # upsample and convtranspose have a test model until the segmentation branch's unet_tiny example lands
    text += (Path(__file__).parent / "models" / "encoder_decoder.cnn").read_text()
    for op in ops.OPS:
        assert re.search(rf"^\s*(\w+:\s*)?{op}\b", text, re.M), f"no example uses `{op}`"
    for mode in ("valid", "same", "full"):
        assert f"padding={mode}" in text
    assert re.search(r"padding=\d+x\d+", text) and re.search(r"size=\d+x\d+", text)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_compiles(path, capsys):
    code, out, err = run(capsys, "compile", path)
    assert code == 0, err
    assert "parameters:" in out


def test_the_language_reference_covers_the_op_table():
    doc = (ROOT / "docs" / "language.md").read_text()
    names = (list(ops.OPS) + list(ops.STATEMENTS) + list(ops.TRAIN_KEYS) + list(ops.LOSSES) + list(ops.OPTIMIZERS)
             + list(ops.SCHEDULES) + list(ops.ACTIVATIONS) + list(ops.PADDINGS)
             + [key for op in ops.OPS.values() for key in op.keys])
    missing = [name for name in names if f"`{name}" not in doc]
    assert not missing, f"docs/language.md does not mention {missing}"



def test_an_unforeseen_memory_error_is_a_message(monkeypatch, capsys):
    def no_memory(args):
        raise MemoryError

    monkeypatch.setattr("cnnc.cli.run_compile", no_memory)
    code, out, err = run(capsys, "compile", LENET)
    assert code == 1 and err.startswith("error: out of memory") and "Traceback" not in err
