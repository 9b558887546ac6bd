"""Diagnostics: the contract's error files through the command line, and the mistakes users make,
each located (line, column, caret) and saying what to change."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnc.cli import main
from cnnc.diagnostics import Loc, ModelError
from cnnc.frontend import check_source

SPEC_ERRORS = sorted(Path("/work/shared/spec/errors").glob("*.cnn"))
HEADER = re.compile(r"#\s*expect-error\s+(\d+):(\d*):?\s*(.*)")


def expectation(path: Path) -> tuple[int, int | None, list[str]]:
    """`# expect-error LINE:COL: a | b` -> (LINE, COL or None, [a, b])."""
    match = HEADER.match(path.read_text().splitlines()[0])
    assert match, f"{path.name} has no expect-error line"
    line, column, fragments = match.groups()
    return int(line), int(column) if column else None, [f.strip() for f in fragments.split("|") if f.strip()]


def caret_column(rendered: str) -> int:
    """The 1-based source column the caret line points at."""
    source_line, caret_line = rendered.splitlines()[1:3]
    start = source_line.index(" | ") + 3
    assert caret_line[:start].strip() == "|"
    return caret_line.index("^") - start + 1


def test_the_spec_has_error_files():
    assert len(SPEC_ERRORS) >= 8


@pytest.mark.parametrize("path", SPEC_ERRORS, ids=lambda p: p.stem)
def test_spec_error_files_through_the_command_line(path, capsys):
    line, column, fragments = expectation(path)
    assert main(["compile", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    first = err.splitlines()[0]
    where = f"{path}:{line}:" + (f"{column}:" if column else "")
    assert first.startswith(where), first
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert err.splitlines()[1].startswith(f" {line} | ") and "^" in err.splitlines()[2]


def test_the_installed_command_prints_no_traceback():
    path = next(p for p in SPEC_ERRORS if p.stem == "missing_flatten")
    command = [shutil.which("cnnc") or sys.executable, "compile", str(path)]
    if not shutil.which("cnnc"):
        command[1:1] = ["-m", "cnnc.cli"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}:6:1: error: ")


# -- the mistakes users make ------------------------------------------------------------------
# (id, source, line, column, caret column or None for the column, fragments of message + hint)

MISTAKES = [
    ("forward-reference", "input 1x8x8\nadd(input1, later)\nlater: relu\n", 2, 1, 13,
     ["`later`", "defined later, at line 3", "above"]),
    ("own-output", "input 1x8x8\na: add(a, input1)\n", 2, 1, 8, ["`a`", "its own output"]),
    ("unknown-name-near-miss", "input 1x8x8\nstem: relu\nadd(input1, sten)\n", 3, 1, 13,
     ["`sten`", "no layer has that name", "did you mean `stem`"]),
    ("duplicate-label", "input 1x8x8\na: relu\na: tanh\n", 3, 1, None, ["label `a`", "already used at line 2"]),
    ("label-shadows-automatic-name", "input 1x8x8\nrelu2: conv filters=1 size=1\nrelu\nrelu\n", 2, 1, None,
     ["`relu2`", "automatic name of the layer at line 4"]),
    ("zero-size", "input 1x8x8\nconv filters=2 size=0\n", 2, 21, None, ["`size`", "positive integer", "`0`"]),
    ("negative-filters", "input 1x8x8\nconv filters=-4 size=3\n", 2, 14, None, ["`filters`", "positive integer"]),
    ("zero-input-dimension", "input 1x0x8\n", 1, 7, None, ["`1x0x8`", "zero dimension", "input CxHxW"]),
    ("float-filters", "input 1x8x8\nconv filters=3.5 size=3\n", 2, 14, None, ["`filters`", "positive integer", "3.5"]),
    ("bias-yes", "input 1x8x8\nconv filters=2 size=3 bias=yes\n", 2, 28, None, ["`bias`", "true or false", "yes"]),
    ("padding-middle", "input 1x8x8\nconv filters=2 size=3 padding=middle\n", 2, 31, None,
     ["`padding`", "valid, same, full", "middle"]),
    ("key-twice", "input 1x8x8\nconv filters=2 size=3 size=5\n", 2, 23, None, ["`size` is given twice", "keep one"]),
    ("unknown-op-near-miss", "input 1x8x8\nmaxpol size=2\n", 2, 1, None,
     ["unknown op `maxpol`", "did you mean `maxpool`"]),
    ("unknown-op", "input 1x8x8\nzzz\n", 2, 1, None, ["unknown op `zzz`", "the ops are: input, conv"]),
    ("unknown-key-near-miss", "input 1x8x8\nconv filters=2 size=3 strid=2\n", 2, 23, None,
     ["no key `strid`", "did you mean `stride`", "filters, size, stride, padding, bias, batchnorm, activation"]),
    ("key-on-a-keyless-op", "input 1x8x8\nrelu alpha=0.1\n", 2, 6, None,
     ["`relu` has no key `alpha`", "`relu` takes no keys"]),
    ("value-on-a-keyless-op", "input 1x8x8\nrelu 3\n", 2, 6, None, ["unexpected value `3`", "`relu` takes no values"]),
    ("input-shape-as-a-key", "input shape=1x8x8\n", 1, 7, None, ["`input` has no key `shape`", "input 1x28x28"]),
    ("missing-required-key", "input 1x8x8\nconv filters=2\n", 2, 1, None, ["`conv` needs `size`", "size="]),
    ("groups-not-dividing-channels", "input 6x8x8\nconv filters=8 size=3 groups=4\n", 2, 1, None,
     ["conv1: groups=4 does not divide its 6 input channels", "input1 is 6x8x8", "valid groups here: 2"]),
    ("groups-not-dividing-filters", "input 8x8x8\nconv filters=6 size=3 groups=8\n", 2, 1, None,
     ["groups=8 does not divide its 6 filters", "valid groups here: 2", "filters must be a multiple of the 8"]),
    ("groups-no-common-divisor", "input 7x8x8\nconv filters=8 size=3 groups=2\n", 2, 1, None,
     ["7 input channels", "no common divisor", "groups=1"]),
    ("groups-zero", "input 8x8x8\nconv filters=8 size=3 groups=0\n", 2, 30, None, ["`groups`", "positive integer", "`0`"]),
    ("dilation-zero", "input 8x8x8\nconv filters=8 size=3 dilation=0\n", 2, 32, None,
     ["`dilation`", "positive integer or HxW", "`0`"]),
    ("dilation-pair-zero", "input 8x8x8\nconv filters=8 size=3 dilation=2x0\n", 2, 32, None, ["`dilation`", "`2x0`"]),
    ("dilated-kernel-too-big", "input 8x5x5\nconv filters=8 size=3 dilation=3\n", 2, 1, None,
     ["the kernel 7x7 (size 3x3, dilated) is larger than its input input1's 5x5", "smaller size or dilation"]),
    ("dense-on-an-image", "input 1x8x8\ndense units=3\n", 2, 1, None, ["dense1 needs a vector", "input1", "1x8x8",
                                                                      "flatten"]),
    ("conv-on-a-vector", "input 1x8x8\nflatten\nconv filters=1 size=1\n", 3, 1, None,
     ["conv1", "flatten1", "vector of 64", "before `flatten`"]),
    ("pool-on-a-vector", "input 1x8x8\nflatten\nglobalavgpool\n", 3, 1, None, ["globalavgpool1", "vector"]),
    ("concat-hw-mismatch", "input 1x8x8\na: conv filters=2 size=3 padding=same\nb: conv(input1) filters=2 size=3\n"
     "concat(a, b)\n", 4, 1, None, ["concat1", "a and b", "2x8x8", "2x6x6", "height and width"]),
    ("concat-vectors", "input 1x8x8\na: flatten\nb: flatten(input1)\nconcat(a, b)\n", 4, 1, None,
     ["concat1", "vector", "along channels"]),
    ("add-shape-mismatch", "input 1x8x8\na: flatten\nb: dense units=3\nadd(a, b)\n", 4, 1, None,
     ["a and b", "64", "3", "one shape"]),
    ("add-one-input", "input 1x8x8\nrelu\nadd(relu1)\n", 3, 1, None, ["`add` takes at least 2 inputs, not 1"]),
    ("add-no-input-list", "input 1x8x8\nrelu\nadd\n", 3, 1, None, ["`add` needs at least 2 inputs", "add(a, b)"]),
    ("relu-two-inputs", "input 1x8x8\na: relu\nrelu(a, input1)\n", 3, 1, None, ["`relu` takes 1 input, not 2"]),
    ("listed-twice", "input 1x8x8\nadd(input1, input1)\n", 2, 13, None, ["`input1` is listed twice"]),
    ("input-missing", "conv filters=1 size=1\nrelu\n", 1, 1, None, ["`conv` comes before the model's input",
                                                                    "input 1x28x28"]),
    ("layer-before-input", "model m\nrelu\ninput 1x8x8\n", 2, 1, None, ["`relu` comes before the model's input"]),
    ("two-inputs", "input 1x8x8\nrelu\ninput 1x8x8\n", 3, 1, None, ["a second `input`", "one input"]),
    ("input-with-input-list", "input 1x8x8\ninput(input1) 1x8x8\n", 2, 1, None, ["second `input`"]),
    ("input-2d-shape", "input 8x8\n", 1, 7, None, ["`8x8`", "2 dimension(s), not 3", "input CxHxW"]),
    ("input-without-shape", "input\n", 1, 1, None, ["`input` needs a shape"]),
    ("input-extra-value", "input 1x8x8 3\n", 1, 13, None, ["unexpected value `3`"]),
    ("model-not-first", "input 1x8x8\nmodel m\n", 2, 1, None, ["`model NAME` must be the first", "top"]),
    ("model-twice", "model a\nmodel b\ninput 1x8x8\n", 2, 1, None, ["a second `model`", "line 1"]),
    ("model-without-name", "model\ninput 1x8x8\n", 1, 1, None, ["`model` takes one name"]),
    ("label-on-loss", "input 1x8x8\nflatten\nl: loss cross_entropy\n", 3, 1, None, ["`loss` is not a layer"]),
    ("unknown-loss", "input 1x8x8\nflatten\nloss mse\n", 3, 6, None, ["unknown loss `mse`", "cross_entropy"]),
    ("loss-twice", "input 1x8x8\nflatten\nloss cross_entropy\nloss cross_entropy\n", 4, 1, None,
     ["a second `loss`"]),
    ("cross-entropy-on-an-image", "input 1x8x8\nrelu\nloss cross_entropy\n", 3, 1, None,
     ["cross_entropy", "relu1 is 1x8x8", "to classify whole images", "flatten", "dense units=CLASSES",
      "a loss per pixel"]),
    ("cross-entropy-on-one-unit", "input 1x8x8\nflatten\ndense units=1\nloss cross_entropy\n", 4, 1, None,
     ["dense1 has 1 value", "class scores"]),
    ("empty-file", "", 1, 1, None, ["no layers", "input CxHxW"]),
    ("only-comments", "# a model\n\n# to come\n", 1, 1, None, ["no layers"]),
    ("only-header", "model m\nloss cross_entropy\n", 1, 1, None, ["no layers"]),
    ("unused-branch", "input 1x8x8\na: conv filters=2 size=3\nb: relu(input1)\n", 2, 1, None,
     ["output of `a` is never used", "m.cnn:3:1: note: the next layer, `b`, takes `input1`; did you mean `a` there?"]),
    ("unused-activated-branch", "input 1x8x8\na: conv filters=2 size=3 activation=relu\n"
     "b: conv(input1) filters=1 size=1\nadd(b, input1)\n", 2, 1, None,
     ["output of `a` is never used", "`b`, takes `input1`"]),
    ("activated-input-by-its-label", "input 1x8x8\nb3: conv filters=2 size=3 activation=relu\ndense units=3\n", 3, 1,
     None, ["its input b3 is 2x6x6"]),
    ("activated-output-by-its-label", "input 1x8x8\nflatten\nd: dense units=1 activation=tanh\nloss cross_entropy\n",
     4, 1, None, ["the output d has 1 value"]),
    ("pool-padding-not-below-size", "input 1x8x8\nmaxpool size=2 padding=2\n", 2, 1, None,
     ["maxpool1", "padding 2x2", "size 2x2", "smaller than the size"]),
    ("kernel-larger-than-input", "input 1x8x8\nconv filters=1 size=3\nmaxpool size=2\nconv filters=1 size=4\n",
     4, 1, None, ["conv2", "4x4", "maxpool1", "3x3"]),
    ("unexpected-character", "input 1x8x8\nrelu @\n", 2, 6, None, ["unexpected character '@'", "`#` starts a comment"]),
    ("stray-bare-value", "input 1x8x8\nconv filters=2 3 size=3\n", 2, 16, None,
     ["unexpected value `3`", "`conv` takes key=value pairs"]),
    ("wrapped-statement", "input 1x8x8\ntrain lr=0.1\n      batch=8\n", 3, 7, None,
     ["`batch=` begins a line", "statement is one line"]),
    ("missing-value-eof", "input 1x8x8\nconv filters=2 size=", 2, 21, None, ["`size=` is missing its value"]),
    ("number-too-large", "input 1x8x8\nconv filters=99999999999999999999 size=1\n", 2, 14, None, ["too large"]),
    ("train-unknown-key", "input 1x8x8\ntrain lr=0.1 epoch=3\n", 2, 14, None,
     ["no key `epoch`", "did you mean `epochs`"]),
    ("train-bad-optimizer", "input 1x8x8\ntrain optimizer=rmsprop\n", 2, 17, None, ["one of sgd, adam"]),
    ("train-zero-lr", "input 1x8x8\ntrain lr=0\n", 2, 10, None, ["`lr`", "> 0"]),
    ("train-nesterov-without-momentum", "input 1x8x8\ntrain lr=0.1 nesterov=true\n", 2, 14, None,
     ["nesterov", "momentum"]),
    ("train-infinite-lr", "input 1x8x8\ntrain lr=1e999\n", 2, 10, None, ["finite"]),
    ("train-mean-without-std", "input 1x8x8\ntrain mean=0.5\n", 2, 7, None,
     ["`mean` needs `std` too", "normalize=auto"]),
    ("train-std-without-mean", "input 1x8x8\ntrain crop=2 std=0.3\n", 2, 14, None, ["`std` needs `mean` too"]),
    ("train-normalize-and-mean", "input 1x8x8\ntrain mean=0.5 std=0.2 normalize=auto\n", 2, 24, None,
     ["`normalize` or `mean` and `std`, not both", "mean= and std= give them"]),
    ("train-normalize-yes", "input 1x8x8\ntrain normalize=yes\n", 2, 17, None, ["`normalize`", "none, auto", "yes"]),
    ("train-zero-std", "input 1x8x8\ntrain mean=0 std=0\n", 2, 18, None, ["`std`", "> 0"]),
    ("train-mean-a-name", "input 1x8x8\ntrain mean=gray std=0.3\n", 2, 12, None, ["`mean` must be a number"]),
    ("train-negative-crop", "input 1x8x8\ntrain crop=-2\n", 2, 12, None, ["`crop`", "integer >= 0"]),
    ("train-flip-yes", "input 1x8x8\ntrain flip=yes\n", 2, 12, None, ["`flip`", "true or false"]),
    ("train-label-smoothing-one", "input 1x8x8\ntrain label_smoothing=1\n", 2, 23, None,
     ["`label_smoothing`", "up to (not including) 1"]),
    ("train-val-one", "input 1x8x8\ntrain val=1.0\n", 2, 11, None, ["`val`", "up to (not including) 1"]),
    ("train-keep-first", "input 1x8x8\ntrain keep=first\n", 2, 12, None, ["`keep`", "last, best"]),
    ("train-fractional-warmup", "input 1x8x8\ntrain warmup=0.5\n", 2, 14, None, ["`warmup`", "integer >= 0"]),
    ("train-unknown-schedule", "input 1x8x8\ntrain schedule=linear\n", 2, 16, None,
     ["constant, step, cosine, onecycle"]),
    ("train-augment-near-miss", "input 1x8x8\ntrain flips=true\n", 2, 7, None, ["did you mean `flip`"]),
    ("dropout-rate-one", "input 1x8x8\ndropout rate=1\n", 2, 14, None, ["`rate`", "up to (not including) 1"]),
    ("activation-softmax", "input 1x8x8\nconv filters=1 size=1 activation=softmax\n", 2, 34, None,
     ["`activation`", "none, relu, sigmoid, tanh"]),
    ("first-error-in-the-file-is-reported", "input 1x8x8\na: relu\nc: conv filters=1 size=9\nd: dense(input1) units=2\n"
     "concat(c, d)\n", 3, 1, None, ["kernel 9x9"]),
    ("pixel-loss-after-a-softmax-over-the-width", "input 1x8x8\nconv filters=3 size=1\nsoftmax\nloss cross_entropy\n",
     3, 1, None, ["softmax1 is a softmax over the width", "(line 4)", "3x8x8", "classes along the channels",
                  "softmax axis=channels"]),
    ("pixel-loss-on-one-channel", "input 1x8x8\nconv filters=1 size=1\nloss cross_entropy\n", 3, 1, None,
     ["conv1 is 1x8x8", "along the channels", "conv filters=CLASSES size=1"]),
    ("softmax-channels-on-a-vector", "input 1x8x8\nflatten\nsoftmax axis=channels\n", 3, 1, None,
     ["softmax1", "axis=channels needs a CxHxW image", "flatten1 is a vector of 64", "leave out `axis=`"]),
    ("softmax-unknown-axis", "input 1x8x8\nsoftmax axis=1\n", 2, 14, None, ["`axis`", "one of last, channels"]),
    ("tab-indented", "input 1x8x8\n\t\tconv filters=2 size=9\n", 2, 3, None, ["9x9", "8x8"]),
    ("crlf-file", "input 1x8x8\r\nconv filters=2 size=0\r\n", 2, 21, None, ["positive integer"]),
    ("upsample-factor-zero", "input 1x8x8\nupsample factor=0\n", 2, 17, None, ["`factor`", "positive integer", "`0`"]),
    ("upsample-unknown-mode", "input 1x8x8\nupsample factor=2 mode=bicubic\n", 2, 24, None,
     ["`mode`", "one of nearest, bilinear", "bicubic"]),
    ("upsample-without-factor", "input 1x8x8\nupsample mode=bilinear\n", 2, 1, None, ["`upsample` needs `factor`"]),
    ("upsample-on-a-vector", "input 1x8x8\nflatten\nupsample factor=2\n", 3, 1, None,
     ["upsample1", "vector of 64", "before `flatten`"]),
    ("convtranspose-padding-same", "input 1x8x8\nconvtranspose filters=2 size=2 stride=2 padding=same\n", 2, 49, None,
     ["`padding` must be an integer >= 0 or HxW, not `same`", "output = (input - 1) * stride", "size=2 stride=2"]),
    ("convtranspose-output-padding-not-below-stride",
     "input 1x8x8\nconvtranspose filters=2 size=3 stride=2 output_padding=2\n", 2, 1, None,
     ["convtranspose1", "output_padding 2x2", "smaller than the stride 2x2", "stride - 1"]),
    ("convtranspose-output-padding-at-stride-one", "input 1x8x8\nconvtranspose filters=2 size=3 output_padding=0x1\n",
     2, 1, None, ["output_padding 0x1", "stride 1x1"]),
    ("convtranspose-padding-eats-the-output", "input 1x1x1\nconvtranspose filters=2 size=2 padding=1\n", 2, 1, None,
     ["convtranspose1", "padding 1x1", "no output", "1x1x1", "0x0", "smaller padding"]),
    ("convtranspose-negative-padding", "input 1x8x8\nconvtranspose filters=2 size=2 padding=-1\n", 2, 40, None,
     ["`padding`", "integer >= 0"]),
    ("pool-rounding-round", "input 1x8x8\nmaxpool size=2 rounding=round\n", 2, 25, None,
     ["`rounding`", "one of floor, ceil", "`round`"]),
    ("count-pad-on-maxpool", "input 1x8x8\nmaxpool size=3 padding=1 count_pad=true\n", 2, 26, None,
     ["`maxpool` has no key `count_pad`", "size, stride, padding, rounding"]),
    ("count-pad-yes", "input 1x8x8\navgpool size=3 count_pad=yes\n", 2, 26, None, ["`count_pad`", "true or false"]),
    ("ceil-pool-padding-not-below-size", "input 1x8x8\navgpool size=2 padding=2 rounding=ceil\n", 2, 1, None,
     ["avgpool1", "padding 2x2", "smaller than the size"]),
    ("convtranspose-on-a-vector", "input 1x8x8\nflatten\nconvtranspose filters=1 size=2\n", 3, 1, None,
     ["convtranspose1", "vector of 64"]),
]


@pytest.mark.parametrize("source, line, column, caret, fragments", [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_located_and_explained(source, line, column, caret, fragments):
    with pytest.raises(ModelError) as info:
        check_source(source, "m.cnn")
    err = info.value
    rendered = err.render()
    assert (err.file, err.line, err.column) == ("m.cnn", line, column), rendered
    assert rendered.startswith(f"m.cnn:{line}:{column}: error: ")
    for fragment in fragments:
        assert fragment in rendered, (fragment, rendered)
    if err.loc.text:
        shown = source.replace("\r", "").split("\n")[line - 1].expandtabs(1)
        assert rendered.splitlines()[1] == f" {line} | {shown}"
        assert caret_column(rendered) == (caret or column), rendered


def test_there_are_many_mistakes():
    assert len(MISTAKES) >= 40


def test_most_mistakes_come_with_a_hint():
    hinted = 0
    for _, source, *_ in MISTAKES:
        with pytest.raises(ModelError) as info:
            check_source(source)
        hinted += bool(info.value.hint)
    assert hinted >= 0.75 * len(MISTAKES)


# -- how a diagnostic prints ------------------------------------------------------------------


def test_render_shows_line_caret_span_and_hint():
    err = ModelError("wrong", Loc("f.cnn", 12, 9, "dense   units=120", 5), "add `flatten` before it")
    assert err.render() == ("f.cnn:12:9: error: wrong\n"
                            " 12 | dense   units=120\n"
                            "    |         ^^^^^\n"
                            "hint: add `flatten` before it")


def test_render_without_location_or_hint():
    assert ModelError("cannot read x").render() == "error: cannot read x"


def test_a_tab_before_the_caret_counts_as_one_column():
    err = ModelError("wrong", Loc("f.cnn", 1, 3, "\t\tconv", 4))
    assert err.render().splitlines()[1:] == [" 1 |   conv", "   |   ^^^^"]


def test_model_error_carries_file_line_column():
    err = ModelError("x", Loc("f.cnn", 3, 4, "abc"))
    assert (err.file, err.line, err.column, err.message) == ("f.cnn", 3, 4, "x")


@pytest.mark.parametrize("hostile", ["\x1b[2J\x1b[31m", "\u202e", "\x07\x08\r", "\u2066x\u2069"])
def test_the_echoed_line_cannot_control_the_terminal(hostile):
    with pytest.raises(ModelError) as info:
        check_source(f"model m\ninput 1x8x8\nconv filters=4 {hostile} size=3\n", "m.cnn")
    rendered = info.value.render()
    assert info.value.line == 3
    assert all(ch == "\n" or ch.isprintable() for ch in rendered), repr(rendered)
    source, caret = rendered.splitlines()[1:3]
    assert source.startswith(" 3 | conv filters=4 \\")
    assert caret.index("^") == source.index("\\")  # the caret points at the escaped character


def test_a_very_long_line_is_cut_around_the_column():
    line = "dense units=" + "1" * 5_000_000 + " colour=red"
    err = ModelError("wrong", Loc("f.cnn", 4, len(line) - 9, line, 6))
    rendered = err.render()
    assert len(rendered) < 400
    source, caret = rendered.splitlines()[1:3]
    assert source.endswith("colour=red") and "..." in source
    assert source[caret.index("^"):caret.index("^") + 6] == "colour"
    start = ModelError("wrong", Loc("f.cnn", 4, 1, line, 5)).render().splitlines()[1:3]
    assert start[0].startswith(" 4 | dense units=111") and start[0].endswith("...") and start[1] == "   | ^^^^^"


def test_file_names_and_messages_are_printable_too(tmp_path, capsys):
    name = tmp_path / "m\x1b[31m.cnn"
    name.write_text("model m\ninput 1x8x8\ndense units=3\n")
    code = main(["compile", str(name)])
    err = capsys.readouterr().err
    assert code == 1 and "\x1b" not in err and "m\\x1b[31m.cnn" in err
