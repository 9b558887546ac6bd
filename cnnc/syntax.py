"""Model-file text -> syntax tree: the Lark parser, a Transformer to plain dataclasses, positions kept.

Block definitions (`block NAME ...` up to `end`) come out as Blocks beside the top-level
statements; cnnc/expand.py turns their uses into plain statements.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources

import lark

from .diagnostics import Loc, ModelError


@dataclass(frozen=True)
class Value:
    """A literal: kind is 'int', 'float', 'name', 'bool', 'dims' (a tuple of ints) or 'expr' (a product
    like `filters*4/2`: a tuple of int and name Values with the operators `*`, `/` between them)."""

    kind: str
    value: object
    text: str
    loc: Loc


@dataclass(frozen=True)
class Arg:
    """`key=value`, or a bare value (key None) as in `input 1x28x28`."""

    key: str | None
    value: Value
    loc: Loc


@dataclass(frozen=True)
class Ref:
    """A layer named in an input list."""

    name: str
    loc: Loc


@dataclass(frozen=True)
class Statement:
    op: str
    label: str | None
    inputs: tuple[Ref, ...] | None
    args: tuple[Arg, ...]
    loc: Loc  # the statement's start (its label, or its op)
    op_loc: Loc
    name: str | None = None  # set by cnnc/expand.py: the layer's final name, `stage2.block1.conv1`
    scope: str = ""  # set by cnnc/expand.py: the prefix of the block use it comes from, `stage2.block1.`


@dataclass(frozen=True)
class Block:
    """`block NAME [(INPUTS)] PARAM PARAM=DEFAULT ...`, its body and `end`. Without an input list
    the block takes one input, called `in` in its body."""

    name: str
    inputs: tuple[Ref, ...] | None
    params: tuple[Arg, ...]  # a bare name is a required parameter; key=value gives a default
    body: tuple[Statement, ...]
    loc: Loc  # `block NAME`
    name_loc: Loc


@dataclass(frozen=True)
class Program:
    file: str
    statements: tuple[Statement, ...]
    lines: tuple[str, ...] = field(repr=False)
    blocks: tuple[Block, ...] = ()


@lru_cache(maxsize=1)
def parser() -> lark.Lark:
    # No propagate_positions: every position we report comes from a token, and filling in
    # each tree node's meta doubles the parse time of a long model.
    grammar = resources.files("cnnc").joinpath("grammar/cnn.lark").read_text()
    return lark.Lark(grammar, parser="lalr", maybe_placeholders=True)


def parse(source: str | bytes, file: str = "<model>") -> Program:
    """Parse a model file's text (or bytes, which must be UTF-8) into a Program."""
    text = normalize(decode(source, file) if isinstance(source, bytes) else source)
    lines = tuple(text.split("\n"))
    try:
        tree = parser().parse(text)
        items = ToStatements(file, lines).transform(tree).children
    except lark.UnexpectedInput as err:
        raise parse_error(err, file, lines) from None
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, ModelError):
            raise err.orig_exc from None
        raise
    statements, blocks = gather_blocks(items)
    return Program(file, tuple(statements), lines, tuple(blocks))


def gather_blocks(items) -> tuple[list[Statement], list[Block]]:
    """The top-level statements, and each `block` line with the statements up to its `end`."""
    statements, blocks, open_block, body = [], [], None, []
    for item in items:
        if isinstance(item, Block):
            if open_block:
                raise ModelError(f"block `{item.name}` is defined inside block `{open_block.name}` "
                                 f"(line {open_block.loc.line})", item.loc,
                                 f"close `{open_block.name}` with `end` first; blocks are defined at the top level")
            open_block, body = item, []
        elif item.op == "end":
            if item.label or item.inputs is not None or item.args:
                raise ModelError("`end` closes a block and takes nothing else", item.loc, "write `end` alone")
            if not open_block:
                raise ModelError("`end` without a block to close", item.loc,
                                 "a block is `block NAME PARAMS`, its layers, then `end`")
            if not body:
                raise ModelError(f"block `{open_block.name}` has no layers", open_block.loc,
                                 "put its layers between the `block` line and `end`")
            blocks.append(Block(open_block.name, open_block.inputs, open_block.params, tuple(body),
                                open_block.loc, open_block.name_loc))
            open_block = None
        else:
            (body if open_block else statements).append(item)
    if open_block:
        raise ModelError(f"block `{open_block.name}` has no `end`", open_block.loc,
                         "close the block with a line `end` after its last layer")
    return statements, blocks


def normalize(text: str) -> str:
    """Without a byte-order mark, and with every line ending (CRLF, CR) as `\\n`, so that Lark's
    line numbers and ours agree."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise undecodable(data, err, file) from None


def undecodable(data: bytes, err: UnicodeDecodeError, file: str) -> ModelError:
    """The first byte that is not UTF-8, located by line and character (not byte) column."""
    body = data.removeprefix(b"\xef\xbb\xbf")  # the utf-8-sig codec counts err.start without it
    before = normalize(body[: err.start].decode("utf-8"))
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    text = normalize(body.decode("utf-8", "replace")).split("\n")[line - 1]
    return ModelError(f"byte 0x{body[err.start]:02x} is not UTF-8 text", Loc(file, line, column, text),
                      "save the model file as UTF-8")


def locate(file: str, lines, line: int, column: int, width: int = 1) -> Loc:
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return Loc(file, line, column, text, width)


class ToStatements(lark.Transformer):
    """Turns Lark's tree into Statements; every node keeps its file, line and column."""

    def __init__(self, file: str, lines):
        super().__init__()
        self.file, self.lines = file, lines

    def _loc(self, token: lark.Token) -> Loc:
        return locate(self.file, self.lines, token.line, token.column, len(token))

    def start(self, statements):
        return lark.Tree("program", [s for s in statements if s is not None])

    def statement(self, children):
        label, op, inputs, *args = children
        op_loc = self._loc(op)
        loc = label[1] if label else op_loc
        if label:
            width = op.end_column - label[1].column if op.line == label[1].line else len(label[0])
            loc = Loc(loc.file, loc.line, loc.column, loc.text, width)
        return Statement(str(op), label[0] if label else None, inputs, tuple(args), loc, op_loc)

    def block_head(self, children):
        name, inputs, *params = children
        name_loc = self._loc(name)
        start = len(name_loc.text) - len(name_loc.text.lstrip()) + 1  # `block` opens the line
        loc = replace(name_loc, column=start, width=name.end_column - start)
        return Block(str(name), inputs, tuple(params), (), loc, name_loc)

    def label(self, children):
        (name,) = children
        return str(name), self._loc(name)

    def inputs(self, names):
        return tuple(Ref(str(n), self._loc(n)) for n in names if n is not None)

    def keyed(self, children):
        key, value = children
        return Arg(str(key), value, self._loc(key))

    def bare(self, children):
        (value,) = children
        return Arg(None, value, value.loc)

    def dims(self, children):
        (tok,) = children
        return Value("dims", tuple(self._int(tok, d) for d in tok.split("x")), str(tok), self._loc(tok))

    def int(self, children):
        (tok,) = children
        return Value("int", self._int(tok, tok), str(tok), self._loc(tok))

    def _int(self, tok: lark.Token, digits: str) -> int:
        # A bound keeps every later int -> float conversion and every size product finite.
        if len(digits.lstrip("+-")) > 18:
            shown = tok if len(tok) <= 24 else f"{tok[:20]}..."
            raise ModelError(f"the number `{shown}` is too large", self._loc(tok), "numbers have at most 18 digits")
        return int(digits)

    def expr(self, children):
        parts = tuple(c if isinstance(c, Value) else str(c) for c in children)
        first, last = parts[0].loc, parts[-1].loc
        loc = replace(first, width=last.column + last.width - first.column)
        return Value("expr", parts, first.text[first.column - 1:first.column - 1 + loc.width], loc)

    def operand(self, children):
        (tok,) = children
        return self.int([tok]) if tok.type == "INT" else self.name([tok])

    def float(self, children):
        (tok,) = children
        return Value("float", float(tok), str(tok), self._loc(tok))

    def name(self, children):
        (tok,) = children
        if tok in ("true", "false"):
            return Value("bool", tok == "true", str(tok), self._loc(tok))
        return Value("name", str(tok), str(tok), self._loc(tok))


def parse_error(err: lark.UnexpectedInput, file: str, lines) -> ModelError:
    """A parser error as a diagnostic a person understands."""
    line, column = max(err.line, 1), max(err.column, 1)
    token = getattr(err, "token", None)
    at_end = token is not None and token.type == "$END"
    if isinstance(err, lark.UnexpectedEOF) or at_end or line > len(lines):
        line = len(lines)
        column = len(lines[-1]) + 1
    loc = locate(file, lines, line, column)
    if isinstance(err, lark.UnexpectedCharacters):
        char = lines[line - 1][column - 1] if column <= len(lines[line - 1]) else "?"
        return ModelError(f"unexpected character {char!r}", loc,
                          "a statement is `[label:] op [(inputs)] key=value ...`; `#` starts a comment")
    key = _dangling_key(lines[line - 1], column)
    if token is not None and token.type in ("_NL", "$END") and key is not None:
        return ModelError(f"`{key}=` is missing its value", loc, f"write {key}=VALUE, e.g. size=3")
    if token is not None and token.type in ("_NL", "$END"):
        return ModelError("the statement ends too early", loc,
                          "a statement is `[label:] op [(inputs)] key=value ...`")
    shown = str(token) if token is not None and token.type not in ("_NL", "$END") else "end of line"
    if re.fullmatch(r"\s*block\s*", lines[line - 1][: column - 1]) and shown == ":":
        return ModelError("`block` begins a block definition and cannot be a label",
                          locate(file, lines, line, lines[line - 1].index("block") + 1, 5),
                          "choose another label; a block is `block NAME PARAMS`, its layers, then `end`")
    wrapped = re.fullmatch(r"(\s*)([A-Za-z_][A-Za-z0-9_]*)\s*", lines[line - 1][: column - 1])
    if shown == "=" and wrapped:
        # `key=value` opening a line: most likely the statement above, wrapped as in Python
        indent, key = wrapped.groups()
        return ModelError(f"`{key}=` begins a line, but keys go on the line of their op",
                          locate(file, lines, line, len(indent) + 1, len(key)),
                          "a statement is one line: join this one to the line above")
    return ModelError(f"unexpected `{shown}`", locate(file, lines, line, column, max(len(shown), 1)),
                      "a statement is `[label:] op [(inputs)] key=value ...`")


def _dangling_key(text: str, column: int) -> str | None:
    """The key of a `key=` that ends right before the column, if there is one."""
    match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*$", text[: column - 1])
    return match.group(1) if match else None
