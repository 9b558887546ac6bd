"""Syntax tree -> flat statements: block uses expanded, every layer named in its scope, every input resolved.

Each layer statement comes out with its final name (`stage2.block1.conv1`) and an input list of
final names, or none where it takes the statement before it in the flat list. A block's body is
a scope of its own: its automatic names and labels are local to each use, and it names its
input `in` (or the names its definition lists). Statements from a block carry, in every
location, the chain of uses that brought them in, so an error there shows both places.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from . import ops
from .diagnostics import Loc, ModelError, Note, did_you_mean
from .syntax import Arg, Block, Program, Ref, Statement, Value

USE_KEYS = ("repeat", "first")  # keys of every block use, beside the block's parameters
RESERVED = ("in", "block", "end") + USE_KEYS
WORDS = set(ops.PADDINGS + ops.ACTIVATIONS + ops.LOSSES + ops.OPTIMIZERS + ops.SCHEDULES) | {"true", "false"}


def expand(program: Program) -> Program:
    """The program with no block uses left: every layer statement named and its inputs resolved."""
    blocks = check_blocks(program)
    out: list[Statement] = []
    Scope(blocks, out).run(program.statements)
    return Program(program.file, tuple(out), program.lines)


def check_blocks(program: Program) -> dict[str, Block]:
    """The definitions by name; a name or parameter that cannot work is an error even if unused."""
    blocks: dict[str, Block] = {}
    for block in program.blocks:
        if block.name in ops.OPS or block.name in ops.STATEMENTS or block.name in RESERVED:
            what = "an op" if block.name in ops.OPS else "a keyword"
            raise ModelError(f"block `{block.name}` has the name of {what}", block.name_loc,
                             "give the block a name of its own")
        if block.name in blocks:
            raise ModelError(f"block `{block.name}` is already defined at line {blocks[block.name].loc.line}",
                             block.name_loc, "give each block its own name")
        seen = set(input_names(block))
        for arg in block.params:
            check_parameter(block, arg, seen)
            seen.add(arg.key or arg.value.value)
        blocks[block.name] = block
    return blocks


def check_parameter(block: Block, arg: Arg, seen: set) -> None:
    name = arg.key if arg.key is not None else arg.value.value
    if arg.key is None and arg.value.kind != "name":
        raise ModelError(f"`{arg.value.text}` is not a parameter name", arg.loc,
                         "a block's parameters are names, with a default as name=VALUE: `block basic filters stride=1`")
    if arg.key is not None and arg.value.kind == "expr":
        raise ModelError(f"the default of `{name}` must be a plain value, not `{arg.value.text}`", arg.value.loc)
    if name in seen:
        raise ModelError(f"block `{block.name}` names `{name}` twice", arg.loc, "give each parameter its own name")
    if name in RESERVED or name in WORDS:
        raise ModelError(f"`{name}` cannot be a parameter name: it already means something in a model file",
                         arg.loc, "choose another name")


def input_names(block: Block) -> list[str]:
    return ["in"] if block.inputs is None else [r.name for r in block.inputs]


@dataclass(frozen=True)
class Frame:
    """What the statements of one scope see: their name prefix, the bound parameters, the names
    of the scope's inputs, the chain of uses for diagnostics and the blocks being expanded."""

    prefix: str = ""
    block: Block | None = None
    bound: dict | None = None  # parameter -> Value
    inputs: dict | None = None  # input name -> final name
    via: tuple[Note, ...] = ()
    stack: tuple[str, ...] = ()


class Scope:
    """Expands the statements of a scope, and of every block use in it, into one flat list."""

    def __init__(self, blocks: dict[str, Block], out: list[Statement]):
        self.blocks, self.out = blocks, out

    def run(self, statements, frame: Frame = Frame(), previous: str | None = None) -> str | None:
        """Expands one scope's statements into self.out; returns the final name of its output."""
        statements = [located(s, frame.via) for s in statements]
        for s in statements:
            self.check_op(s, frame)
        layers = [s for s in statements if s.op not in ops.STATEMENTS]
        names = dict(zip(map(id, layers), automatic_names(layers)))
        check_labels(layers, list(names.values()), frame)
        local = dict(frame.inputs or {})  # a name this scope can use -> the final name of its output
        for stmt in statements:
            if stmt.op in ops.STATEMENTS:  # `model`, `loss`, `train`: only at the top level (check_op)
                self.out.append(stmt)
                continue
            auto = names[id(stmt)]
            refs = resolve(stmt, local, layers, list(names.values()), frame)
            first_layer = stmt is layers[0]
            stmt = bind(stmt, frame)
            name = frame.prefix + (stmt.label or auto)
            if refs is None and first_layer and frame.block is not None:
                refs = (Ref(previous, stmt.loc),)  # a block's first layer takes the block's input
            if stmt.op in self.blocks:
                previous = self.use(stmt, name, refs, previous, frame)
            else:
                self.out.append(replace(stmt, label=stmt.label and name, inputs=refs, name=name, scope=frame.prefix))
                previous = name
            local[auto] = previous
            if stmt.label:
                local[stmt.label] = previous
        return previous

    def check_op(self, s: Statement, frame: Frame) -> None:
        if s.op in ops.OPS and s.op != "input" or s.op in self.blocks:
            return
        if frame.block is not None and (s.op in ops.STATEMENTS or s.op == "input"):
            raise ModelError(f"`{s.op}` cannot stand inside block `{frame.block.name}`", s.op_loc,
                             "a block holds layers; put it at the top level")
        if s.op in ops.STATEMENTS or s.op == "input":
            return
        valid = list(ops.OPS) + list(ops.STATEMENTS)
        guess = did_you_mean(s.op, valid + list(self.blocks))
        hint = (f"did you mean `{guess}`? " if guess else "") + "the ops are: " + ", ".join(valid)
        if self.blocks:
            hint += "; the blocks: " + ", ".join(self.blocks)
        raise ModelError(f"unknown op `{s.op}`", s.op_loc, hint)

    def use(self, stmt: Statement, name: str, refs, previous, frame: Frame) -> str:
        """A block use: its copies expanded one after the other; the final name of the last one's output."""
        block = self.blocks[stmt.op]
        repeat, first, args = use_keys(stmt, self.blocks)
        sources = [r.name for r in refs] if refs is not None else [previous]
        if sources == [None]:
            raise ModelError(f"`{stmt.op}` comes before the model's input", stmt.loc,
                             "the first layer is `input CxHxW`, e.g. `input 1x28x28`")
        if repeat > 1 and len(input_names(block)) != 1:
            raise ModelError(f"block `{block.name}` takes {len(input_names(block))} inputs, so it cannot be repeated",
                             stmt.loc, "repeat=N chains copies, each taking the one before")
        for i in range(repeat):
            copy = first if i == 0 and first else block
            if copy.name in frame.stack:
                cycle = " -> ".join(frame.stack[frame.stack.index(copy.name):] + (copy.name,))
                raise ModelError(f"block `{copy.name}` uses itself ({cycle})", stmt.op_loc,
                                 "a block cannot contain itself; write a repetition with repeat=N")
            wanted = input_names(copy)
            if len(sources) != len(wanted):
                raise wrong_inputs(stmt, copy, len(sources), refs is None)
            bound = bind_arguments(stmt, copy, args)
            copy_name = f"{name}.block{i + 1}" if repeat > 1 or has_key(stmt, "repeat") else name
            shown = ", ".join(f"{k}={v.text}" for k, v in bound.items())
            note = Note(f"in block `{copy.name}`{f' ({shown})' if shown else ''}, used here as `{copy_name}`",
                        replace(stmt.loc, via=()))
            inner = Frame(copy_name + ".", copy, bound, dict(zip(wanted, sources)), (note,) + frame.via,
                          frame.stack + (copy.name,))
            sources = [self.run(copy.body, inner, sources[0])]
        return sources[0]


def located(s: Statement, via: tuple[Note, ...]) -> Statement:
    """The statement with the chain of uses in every location, so any error in it shows them."""
    if not via:
        return s

    def at(loc: Loc) -> Loc:
        return replace(loc, via=via)

    def value(v: Value) -> Value:
        parts = tuple(value(p) if isinstance(p, Value) else p for p in v.value) if v.kind == "expr" else v.value
        return replace(v, value=parts, loc=at(v.loc))

    args = tuple(replace(a, value=value(a.value), loc=at(a.loc)) for a in s.args)
    inputs = None if s.inputs is None else tuple(replace(r, loc=at(r.loc)) for r in s.inputs)
    return replace(s, loc=at(s.loc), op_loc=at(s.op_loc), args=args, inputs=inputs)


def bind(stmt: Statement, frame: Frame) -> Statement:
    """Parameters replaced by their values and products computed; each value keeps its place."""
    return replace(stmt, args=tuple(replace(a, value=bound_value(a.value, frame)) for a in stmt.args))


def bound_value(v: Value, frame: Frame) -> Value:
    bound = frame.bound or {}
    if v.kind == "name" and v.value in bound:
        given = bound[v.value]
        return replace(given, loc=v.loc)
    if v.kind != "expr":
        return v
    result = None
    op = "*"
    for part in v.value:
        if isinstance(part, str):
            op = part
            continue
        number = operand(part, v, frame)
        if result is None:
            result = number
        elif op == "*":
            result *= number
        elif number == 0:
            raise ModelError(f"`{v.text}` divides by zero", v.loc)
        else:
            result //= number
    if abs(result) >= 10 ** 18:
        raise ModelError(f"`{v.text}` is too large ({result})", v.loc, "numbers have at most 18 digits")
    return Value("int", result, f"{v.text} = {result}" if any(isinstance(p, Value) and p.kind == "name"
                                                              for p in v.value) else str(result), v.loc)


def operand(part: Value, expr: Value, frame: Frame) -> int:
    if part.kind == "int":
        return part.value
    bound = frame.bound or {}
    if part.value not in bound:
        where = f"block `{frame.block.name}`" if frame.block else "the top level, outside any block"
        params = ", ".join(bound) or "none"
        raise ModelError(f"`{part.value}` in `{expr.text}` is not a parameter", part.loc,
                         f"arithmetic takes integers and parameters; the parameters of {where}: {params}")
    value = bound[part.value]
    if value.kind != "int":
        raise ModelError(f"`{expr.text}` needs integers, but `{part.value}` is `{value.text}`", part.loc)
    return value.value


def use_keys(stmt: Statement, blocks) -> tuple[int, Block | None, dict[str, Arg]]:
    """`repeat=` and `first=` of a use, and its other arguments by key."""
    repeat, first, args = 1, None, {}
    for arg in stmt.args:
        if arg.key is None:
            raise ModelError(f"unexpected value `{arg.value.text}`", arg.loc,
                             f"block `{stmt.op}` takes key=value pairs: " + ", ".join(parameters(blocks[stmt.op])
                                                                                       + list(USE_KEYS)))
        if arg.key in args or (arg.key in USE_KEYS and has_key(stmt, arg.key, before=arg)):
            raise ModelError(f"`{arg.key}` is given twice", arg.loc, "keep one")
        v = arg.value
        if arg.key == "repeat":
            if v.kind != "int" or v.value < 1:
                raise ModelError(f"`repeat` must be a positive integer, not `{v.text}`", v.loc,
                                 "repeat=N uses the block N times in a chain; to leave it out, remove the line")
            repeat = v.value
        elif arg.key == "first":
            if v.kind != "name" or v.value not in blocks:
                guess = did_you_mean(str(v.value), blocks)
                raise ModelError(f"`first` must name a block, not `{v.text}`", v.loc,
                                 (f"did you mean `{guess}`? " if guess else "") + "the blocks: " + ", ".join(blocks))
            first = blocks[v.value]
        else:
            args[arg.key] = arg
    return repeat, first, args


def has_key(stmt: Statement, key: str, before: Arg | None = None) -> bool:
    for arg in stmt.args:
        if arg is before:
            return False
        if arg.key == key:
            return True
    return False


def parameters(block: Block) -> list[str]:
    return [a.key if a.key is not None else a.value.value for a in block.params]


def bind_arguments(stmt: Statement, block: Block, args: dict[str, Arg]) -> dict[str, Value]:
    """Parameter -> value for one use of a block: each argument checked, defaults filled in."""
    names = parameters(block)
    for key, arg in args.items():
        if key not in names:
            guess = did_you_mean(key, names + list(USE_KEYS))
            hint = (f"did you mean `{guess}`? " if guess else "") + \
                f"the parameters of `{block.name}` are: " + (", ".join(names) or "none") + "; and repeat, first"
            raise ModelError(f"block `{block.name}` has no parameter `{key}`", arg.loc, hint)
    bound = {}
    for param in block.params:
        if param.key is None:
            name = param.value.value
            if name not in args:
                raise ModelError(f"block `{block.name}` needs `{name}`", stmt.loc,
                                 f"add {name}=... (block `{block.name}` is defined at line {block.loc.line})")
            bound[name] = args[name].value
        else:
            given = args.get(param.key)
            if given is not None and not same_kind(given.value, param.value):
                raise ModelError(f"`{param.key}` of block `{block.name}` takes {KINDS[param.value.kind]} like its "
                                 f"default `{param.value.text}`, not `{given.value.text}`", given.value.loc,
                                 f"the default is at line {param.loc.line}")
            bound[param.key] = given.value if given is not None else param.value
    return bound


KINDS = {"int": "an integer or a pair HxW", "float": "a number", "name": "a name", "bool": "true or false",
         "dims": "an integer or a pair HxW"}


def same_kind(given: Value, default: Value) -> bool:
    if default.kind == "float":
        return given.kind in ("int", "float")
    if default.kind in ("int", "dims"):
        return given.kind in ("int", "dims")
    return given.kind == default.kind


def wrong_inputs(stmt: Statement, block: Block, count: int, implicit: bool) -> ModelError:
    wanted = input_names(block)
    if implicit:
        return ModelError(f"block `{block.name}` takes {len(wanted)} inputs", stmt.loc,
                          f"name them: `{stmt.op}({', '.join(chr(97 + i) for i in range(len(wanted)))})`")
    return ModelError(f"block `{block.name}` takes {len(wanted)} input{'s' if len(wanted) != 1 else ''}, not {count}",
                      stmt.loc, f"its inputs are: {', '.join(wanted)} (line {block.loc.line})")


def automatic_names(layers: list[Statement]) -> list[str]:
    """`<op><n>`: n counts the layers of that op (or uses of that block) in the scope, labeled ones included."""
    counts: dict[str, int] = {}
    names = []
    for s in layers:
        counts[s.op] = counts.get(s.op, 0) + 1
        names.append(f"{s.op}{counts[s.op]}")
    return names


def check_labels(layers: list[Statement], names: list[str], frame: Frame) -> None:
    seen: dict[str, Statement] = {}
    automatic = dict(zip(names, layers))
    inputs = frame.inputs or {}
    for s, auto in zip(layers, names):
        if not s.label:
            continue
        if s.label in inputs:
            raise ModelError(f"label `{s.label}` is the name of the input of block `{frame.block.name}`", s.loc,
                             "choose another label")
        if s.label in seen:
            raise ModelError(f"label `{s.label}` is already used at line {seen[s.label].loc.line}", s.loc,
                             "give each labeled layer its own name")
        owner = automatic.get(s.label)
        if owner is not None and owner is not s:
            raise ModelError(f"label `{s.label}` is the automatic name of the layer at line {owner.loc.line}",
                             s.loc, "choose a label that is not `<op><n>` of another layer")
        seen[s.label] = s


def resolve(stmt: Statement, local: dict[str, str], layers, names, frame: Frame):
    """The input list with each name replaced by the final name of the output it means."""
    if stmt.inputs is None:
        return None
    refs = []
    for ref in stmt.inputs:
        if ref.name not in local:
            raise unknown_layer(ref, stmt, layers, names, local, frame)
        refs.append(replace(ref, name=local[ref.name]))
    return tuple(refs)


def unknown_layer(ref: Ref, stmt: Statement, layers, names, local, frame: Frame) -> ModelError:
    """Reported at the statement, the caret under the name it cannot find."""
    loc = replace(stmt.loc, mark=ref.loc.column, width=len(ref.name))
    later = [s for s, auto in zip(layers, names) if ref.name in (s.label, auto)]
    if later and later[0] is stmt:
        return ModelError(f"{stmt.op} takes `{ref.name}`, its own output", loc,
                          "a layer can only take layers above it")
    if later:
        return ModelError(f"{stmt.op} takes `{ref.name}`, which is defined later, at line {later[0].loc.line}",
                          loc, "a layer can only take layers above it")
    guess = did_you_mean(ref.name, local)
    if guess:
        hint = f"did you mean `{guess}`?"
    elif frame.block is not None:
        hint = (f"inside block `{frame.block.name}`, name its own layers or its input"
                f"{'s' if len(frame.inputs) > 1 else ''} " + ", ".join(f"`{n}`" for n in frame.inputs))
    else:
        hint = "name a layer above this one, by its label or `<op><n>`"
    return ModelError(f"{stmt.op} takes `{ref.name}`, but no layer has that name", loc, hint)
