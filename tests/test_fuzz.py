"""Fuzzing the front end: whatever the bytes, the result is a checked graph or a ModelError, and a
checked graph goes through both pipelines, the summary, DOT and JSON. Never any other exception."""
from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc import ops
from cnnc.diagnostics import ModelError
from cnnc.export.dot import to_dot
from cnnc.export.json import to_json
from cnnc.frontend import check_source, optimized
from cnnc.summary import render_summary

EXAMPLES = [p.read_text() for p in sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.cnn"))]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def front_end(source: str | bytes) -> None:
    """Everything the front end does with a model; only a ModelError may come out."""
    try:
        g = check_source(source, "fuzz.cnn")
    except ModelError as err:
        assert err.render().startswith(("fuzz.cnn:", "error:"))
        return
    for mode in ("inference", "training"):
        after, applied = optimized(g, mode)
        render_summary(g, after, applied)
        to_dot(after)
        json.loads(to_json(after))


# -- random input -----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data):
    front_end(data)


ALPHABET = "abcdefiklnoprstuvxyz_0123456789 \t\r\n#:=(),.+-*/eEx\ufeff"


@FUZZ
@given(st.text(alphabet=ALPHABET, max_size=200))
def test_random_text_from_the_alphabet(text):
    front_end(text)


WORDS = (list(ops.OPS) + list(ops.STATEMENTS) + list(ops.LOSSES) + list(ops.PADDINGS) + list(ops.ACTIVATIONS)
         + ["true", "false", "a", "b", "input1", "conv1", "relu1"]
         + [f"{key}=" for op in ops.OPS.values() for key in op.keys] + [f"{key}=" for key in ops.TRAIN_KEYS]
         + ["0", "1", "2", "3", "-1", "0.5", "1e-3", "3x3", "2x1", "1x8x8", "3x16x16", "(", ")", ",", ":", "\n", "#"]
         + ["block", "end", "in", "b", "n", "n*2", "n/2", "repeat=", "first=", "batchnorm=", "n=", "b1", "b.conv1"])


@FUZZ
@given(st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join))
def test_random_statements_from_the_language_words(text):
    front_end(text)


# -- random block definitions and uses --------------------------------------------------------

PARAMS = ["n", "k", "s", "m"]
VALUES = ["1", "2", "3", "0", "-1", "2x2", "same", "relu", "true", "1.5"]


@st.composite
def block_value(draw, params):
    """A literal, a parameter or a product of them: what a key in a block body may hold."""
    atoms = st.sampled_from(VALUES + params + ["zz"])
    if draw(st.booleans()):
        return draw(atoms)
    parts = draw(st.lists(st.sampled_from(["1", "2", "4", "0"] + params + ["zz"]), min_size=2, max_size=3))
    return "".join(p + draw(st.sampled_from("*/")) for p in parts[:-1]) + parts[-1]


@st.composite
def body_line(draw, params, inputs):
    op = draw(st.sampled_from(["conv", "conv", "relu", "batchnorm", "maxpool", "add", "concat", "dense", "b0", "b1",
                               "input", "flatten"]))
    label = draw(st.sampled_from(["", "", "x: ", "y: ", "in: "]))
    listed = draw(st.sampled_from(["", "", "(in)", "(x)", "(in, x)", "(x, y)"] + [f"({i})" for i in inputs]))
    keys = {"conv": ["filters", "size", "stride", "padding", "bias", "batchnorm", "activation"],
            "maxpool": ["size", "stride"], "dense": ["units"], "b0": ["n", "k", "repeat", "first"],
            "b1": ["n", "m", "repeat"]}.get(op, [])
    chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)) if keys else []
    args = " ".join(f"{key}={draw(block_value(params))}" for key in chosen)
    return f"{label}{op}{listed} {args}"


@st.composite
def block_program(draw):
    """One or two blocks with random parameters and bodies, used with random arguments."""
    lines = []
    for name in ("b0", "b1")[:draw(st.integers(1, 2))]:
        params = draw(st.lists(st.sampled_from(PARAMS), max_size=3, unique=True))
        head = " ".join(p if draw(st.booleans()) else f"{p}={draw(st.sampled_from(VALUES))}" for p in params)
        inputs = draw(st.sampled_from([[], [], ["p", "q"]]))
        listed = f"({', '.join(inputs)})" if inputs else ""
        lines.append(f"block {name}{listed} {head}")
        simple = st.sampled_from(["relu", "conv filters=2 size=1", f"conv filters={params[0]} size=3 padding=same"
                                  if params else "batchnorm", "add(in, x)" if not inputs else "concat(p, q)"])
        count = draw(st.integers(0, 4)) or 1
        lines += ["  " + draw(st.one_of(simple, body_line(params, inputs))) for _ in range(count)]
        if draw(st.integers(0, 19)):
            lines.append("end")
    lines.append("input " + draw(st.sampled_from(["2x8x8", "1x4x4", "3x2x2"])))
    uses = st.sampled_from(["b0", "b0 n=2", "b0 n=1 k=2 s=1 m=2", "r: b0 n=3 repeat=2", "b1 n=2 repeat=3 first=b0",
                            "b0(input1, relu1) n=2", "relu", "conv filters=2 size=1"])
    for _ in range(draw(st.integers(1, 4))):
        lines.append(draw(st.one_of(uses, body_line(["zz"], []).map(lambda t: t.replace("(in)", "(input1)")))))
    return "\n".join(draw(st.permutations(lines)) if not draw(st.integers(0, 9)) else lines) + "\n"


@FUZZ
@given(block_program())
def test_random_block_definitions_and_uses(source):
    front_end(source)


# -- mutated examples -------------------------------------------------------------------------


def delete_line(lines, i, _):
    return lines[:i] + lines[i + 1:]


def duplicate_line(lines, i, _):
    return lines[:i + 1] + lines[i:]


def swap_lines(lines, i, j):
    lines = list(lines)
    lines[i], lines[j] = lines[j], lines[i]
    return lines


def change_number(lines, i, j):
    numbers = [-1, 0, 1, 2, 7, 64, 100000, 0.5, 1.5]
    new = str(numbers[j % len(numbers)])
    return lines[:i] + [re.sub(r"\d+(\.\d+)?", new, lines[i], count=1)] + lines[i + 1:]


def drop_token(lines, i, j):
    tokens = re.findall(r"\w+|[^\w\s]", lines[i])
    if tokens:
        del tokens[j % len(tokens)]
    return lines[:i] + [" ".join(tokens)] + lines[i + 1:]


BLOCK_WORDS = ["in", "end", "block", "filters", "growth*0", "repeat=0", "first=basic", "basic", "r", "filters=filters"]


def replace_word(lines, i, j):
    """A word of a line swapped for one of the block syntax's: the examples with blocks break in their own ways."""
    words = lines[i].split()
    if words:
        words[j % len(words)] = BLOCK_WORDS[j % len(BLOCK_WORDS)]
    return lines[:i] + [" ".join(words)] + lines[i + 1:]


MUTATIONS = [delete_line, duplicate_line, swap_lines, change_number, drop_token, replace_word]


@st.composite
def mutated_example(draw):
    lines = draw(st.sampled_from(EXAMPLES)).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        mutate = draw(st.sampled_from(MUTATIONS))
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines = mutate(lines, i, j)
    return "\n".join(lines) + "\n"


@FUZZ
@given(mutated_example())
def test_mutated_examples(source):
    front_end(source)


def test_each_mutation_changes_a_layer_line():
    lines = ["input 1x8x8", "conv filters=6 size=5 padding=same", "relu"]
    assert all(mutate(lines, 1, 2) != lines for mutate in MUTATIONS)
