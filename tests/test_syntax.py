"""cnnc.syntax: model-file text -> Program. Value kinds, labels, input lists, the text's layout
(comments, line endings, tabs, BOM, encoding) and the positions every diagnostic relies on."""
from __future__ import annotations

import pytest

from cnnc.diagnostics import ModelError
from cnnc.syntax import parse

LENET_HEAD = "model m\ninput 1x8x8\n\nconv filters=2 size=3 padding=same\nrelu\n"


def statement(text: str):
    (only,) = parse(text).statements
    return only


def summary(program):
    """What a program says, without positions: comparable across layouts of the same text."""
    return [(s.op, s.label, s.inputs and tuple(r.name for r in s.inputs),
             tuple((a.key, a.value.kind, a.value.value) for a in s.args), s.loc.line)
            for s in program.statements]


# -- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, value", [
    ("3", "int", 3), ("-2", "int", -2), ("+7", "int", 7), ("007", "int", 7),
    ("0.05", "float", 0.05), ("1e-3", "float", 1e-3), ("1E+2", "float", 100.0), ("2.", "float", 2.0),
    (".5", "float", 0.5), ("-1.5e2", "float", -150.0), ("3e0", "float", 3.0),
    ("same", "name", "same"), ("_x9", "name", "_x9"), ("True", "name", "True"),
    ("true", "bool", True), ("false", "bool", False),
    ("3x3", "dims", (3, 3)), ("2x1", "dims", (2, 1)), ("1x28x28", "dims", (1, 28, 28)),
])
def test_value_kinds(text, kind, value):
    (arg,) = statement(f"conv size={text}").args
    assert (arg.key, arg.value.kind, arg.value.value, arg.value.text) == ("size", kind, value, text)


def test_a_bare_value_has_no_key():
    (arg,) = statement("input 1x28x28").args
    assert arg.key is None and arg.value.value == (1, 28, 28)


def test_values_keep_their_order():
    s = statement("train lr=0.1 batch=8 optimizer=adam nesterov=false")
    assert [(a.key, a.value.value) for a in s.args] == [("lr", 0.1), ("batch", 8), ("optimizer", "adam"),
                                                         ("nesterov", False)]


@pytest.mark.parametrize("text", ["1" * 19, "1x" + "9" * 19 + "x3", "-" + "9" * 40])
def test_a_number_too_large_is_a_located_error(text):
    with pytest.raises(ModelError, match="too large") as err:
        parse(f"input 1x8x8\nconv filters={text}\n")
    assert (err.value.line, err.value.column) == (2, 14)


# -- labels and input lists -------------------------------------------------------------------


@pytest.mark.parametrize("text, label", [("a: relu", "a"), ("stem:relu", "stem"), ("  b1 :  relu", "b1"),
                                         ("relu", None)])
def test_labels(text, label):
    s = statement(text)
    assert (s.op, s.label) == ("relu", label)


@pytest.mark.parametrize("text, names", [
    ("add(a, b)", ("a", "b")), ("concat(c,a , b)", ("c", "a", "b")), ("relu(x)", ("x",)),
    ("relu()", ()), ("relu", None),
])
def test_input_lists(text, names):
    s = statement(text)
    assert (None if s.inputs is None else tuple(r.name for r in s.inputs)) == names


def test_label_input_list_and_keys_together():
    s = statement("down: conv(block1) filters=32 size=1 stride=2")
    assert (s.label, s.op, [r.name for r in s.inputs], [a.key for a in s.args]) == \
        ("down", "conv", ["block1"], ["filters", "size", "stride"])


# -- the text's layout ------------------------------------------------------------------------


def test_comments_and_blank_lines_are_free():
    program = parse("# head\n\n   # indented\ninput 1x8x8   # trailing\n\n\nrelu # size=3\n# tail")
    assert summary(program) == [("input", None, None, ((None, "dims", (1, 8, 8)),), 4),
                                ("relu", None, None, (), 7)]


@pytest.mark.parametrize("variant", [
    lambda t: t.replace("\n", "\r\n"),  # Windows
    lambda t: t.replace("\n", "\r"),  # classic Mac
    lambda t: t.rstrip("\n"),  # no final newline
    lambda t: "\ufeff" + t,  # a byte-order mark
    lambda t: t.replace(" ", "\t"),  # tabs between tokens
    lambda t: "\n".join("\t  " + line + " \t" for line in t.split("\n")),  # indentation, trailing blanks
    lambda t: t + "\n\n\n",
], ids=["crlf", "cr", "no-final-newline", "bom", "tabs", "indent", "trailing-blank-lines"])
def test_layouts_of_the_same_text_parse_the_same(variant):
    assert summary(parse(variant(LENET_HEAD))) == summary(parse(LENET_HEAD))


@pytest.mark.parametrize("data", [
    LENET_HEAD.encode(), b"\xef\xbb\xbf" + LENET_HEAD.encode(), LENET_HEAD.replace("\n", "\r\n").encode(),
])
def test_bytes_are_utf8_with_or_without_bom(data):
    assert summary(parse(data)) == summary(parse(LENET_HEAD))


def test_crlf_keeps_lines_and_columns():
    s = parse("input 1x8x8\r\n\r\nconv filters=2 size=3\r\n").statements[1]
    assert (s.loc.line, s.args[1].loc.column, s.loc.text) == (3, 16, "conv filters=2 size=3")


@pytest.mark.parametrize("data, line, column", [
    (b"input 1x8x8\nrelu \xff\n", 2, 6),
    (b"\xef\xbb\xbfinput 1x8x8 # \xc3\xa9\xe2\x82\xac\xff\n", 1, 17),  # BOM, then two multi-byte characters
    (b"input 1x8x8\r\n# \x80\r\n", 2, 3),
    (b"input 1x8x8\r# ok\r\xc3(", 3, 1),
])
def test_bytes_that_are_not_utf8_are_a_located_error(data, line, column):
    with pytest.raises(ModelError, match="not UTF-8") as err:
        parse(data, "m.cnn")
    assert (err.value.file, err.value.line, err.value.column) == ("m.cnn", line, column)
    assert "UTF-8" in err.value.hint and "\r" not in err.value.loc.text


# -- positions --------------------------------------------------------------------------------


def test_positions_of_statement_op_keys_values_and_inputs():
    program = parse("input 1x8x8\n\n  b2: add(a,  stem) \n\tconv filters=16 size=3x5\n", "net.cnn")
    add, conv = program.statements[1:]
    assert (add.loc.file, add.loc.line, add.loc.column, add.loc.text) == ("net.cnn", 3, 3, "  b2: add(a,  stem) ")
    assert add.loc.width == len("b2: add")
    assert (add.op_loc.column, add.op_loc.width) == (7, 3)
    assert [(r.loc.line, r.loc.column, r.loc.width) for r in add.inputs] == [(3, 11, 1), (3, 15, 4)]
    filters, size = conv.args
    assert (conv.loc.line, conv.loc.column, conv.loc.width) == (4, 2, 4)
    assert (filters.loc.column, filters.loc.width, filters.value.loc.column, filters.value.loc.width) == (7, 7, 15, 2)
    assert (size.loc.column, size.value.loc.column, size.value.loc.width) == (18, 23, 3)


def test_program_keeps_the_source_lines():
    program = parse("input 1x8x8\r\nrelu\n")
    assert program.lines == ("input 1x8x8", "relu", "")


# -- what the grammar itself rejects ----------------------------------------------------------


@pytest.mark.parametrize("text, line, column, fragment", [
    ("input 1x8x8\nconv filters=6 size=\nrelu\n", 2, 21, "`size=` is missing its value"),
    ("input 1x8x8\nconv filters=6 size=", 2, 21, "`size=` is missing its value"),
    ("input 1x8x8\nrelu $\n", 2, 6, "unexpected character '$'"),
    ("input 1x8x8\nrelu é\n", 2, 6, "unexpected character 'é'"),
    ("input 1x8x8\na:\nrelu\n", 2, 3, "ends too early"),
    ("input 1x8x8\nadd(a b)\n", 2, 7, "unexpected `b`"),
    ("input 1x8x8\nadd(a,)\n", 2, 7, "unexpected `)`"),
    ("input 1x8x8\nrelu a=b=c\n", 2, 9, "unexpected `=`"),
    ("input 1x8x8\n= 3\n", 2, 1, "unexpected `=`"),
    ("input 1x8x8\nrelu (\n", 2, 7, "ends too early"),
])
def test_syntax_errors_are_located(text, line, column, fragment):
    with pytest.raises(ModelError) as err:
        parse(text)
    assert (err.value.line, err.value.column) == (line, column)
    assert fragment in err.value.message and err.value.hint


# -- blocks and products ----------------------------------------------------------------------


def test_a_block_definition_is_gathered_with_its_body():
    program = parse("input 1x8x8\n\nblock up(x, skip) filters stride=2  # two inputs\n"
                    "  conv(x) filters=filters size=1\n"
                    "  concat(up1, skip)\nend\nup(input1, input1) filters=3\n", "m.cnn")
    (block,) = program.blocks
    assert (block.name, [r.name for r in block.inputs]) == ("up", ["x", "skip"])
    assert [(a.key, a.value.value) for a in block.params] == [(None, "filters"), ("stride", 2)]
    assert [s.op for s in block.body] == ["conv", "concat"]
    assert [s.op for s in program.statements] == ["input", "up"]
    assert (block.loc.line, block.loc.column, block.loc.width, block.name_loc.column) == (3, 1, 8, 7)


def test_a_block_without_inputs_or_parameters():
    (block,) = parse("block stem\n  relu\nend\n").blocks
    assert (block.inputs, block.params, len(block.body)) == (None, (), 1)


@pytest.mark.parametrize("text, parts", [
    ("n*4", ("n", "*", 4)), ("growth*4/2", ("growth", "*", 4, "/", 2)), ("2*k", (2, "*", "k")),
    ("n * 2", ("n", "*", 2)),
])
def test_products(text, parts):
    (arg,) = statement(f"conv filters={text}").args
    assert arg.value.kind == "expr" and arg.value.text == text
    assert tuple(p.value if not isinstance(p, str) else p for p in arg.value.value) == parts
    assert (arg.value.loc.column, arg.value.loc.width) == (14, len(text))


def test_block_is_a_word_only_at_the_start_of_a_line():
    s = statement("x: conv(block) filters=1 size=1")
    assert [r.name for r in s.inputs] == ["block"]
