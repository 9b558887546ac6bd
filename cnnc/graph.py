"""Expanded syntax tree -> networkx computation graph: edges, input counts, checked attributes.

cnnc/expand.py has named every layer and resolved every input list; this stage checks each
statement against the op table. A node is a layer (see docs/design.md for its attributes).
`activation=relu` on a conv or a dense layer becomes a separate `relu` node named
`<layer>.relu`, the same graph as a `relu` line after it, and `batchnorm=true` on a conv a
`batchnorm` node `<layer>.batchnorm` before it; the passes fuse them back where that pays.
"""
from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx

from . import ops
from .diagnostics import Loc, ModelError, Note, did_you_mean
from .syntax import Arg, Program, Statement, Value


def inputs(g: nx.DiGraph, node: str) -> list[str]:
    """A node's inputs in the order the model file lists them."""
    return [u for u, _ in sorted(g.in_edges(node), key=lambda e: g.edges[e]["index"])]


def in_file_order(g: nx.DiGraph) -> list[str]:
    """The nodes in a topological order that keeps to the model file's order where the edges
    leave a choice, so that summaries read like the file and the first error reported is the
    first in the file."""
    position = {node: i for i, node in enumerate(g)}
    return list(nx.lexicographical_topological_sort(g, key=position.__getitem__))


def shown(g: nx.DiGraph, node: str) -> str:
    """The name the user knows a node by: `b3` for `b3.relu`, the node `activation=relu` on `b3` stands for."""
    return g.nodes[node].get("layer", node)


def consumers(g: nx.DiGraph, node: str) -> list[str]:
    return list(g.successors(node))


def build_graph(program: Program, name: str | None = None) -> nx.DiGraph:
    """The computation graph of an expanded model file (cnnc/expand.py), before shape checks."""
    layers = [s for s in program.statements if s.op not in ops.STATEMENTS]
    header = [s for s in program.statements if s.op in ops.STATEMENTS]
    g = nx.DiGraph(file=program.file, name=name or "model", loss=None, train={}, input=None, output=None)
    for s in header:
        read_statement(g, s, program.statements)
    if not layers:
        raise ModelError("the model has no layers", Loc(program.file, 1, 1, program.lines[0]),
                         "start with `input CxHxW`, e.g. `input 1x28x28`")
    outputs: dict[str, str] = {}  # a layer's final name -> the node holding its output
    previous = None
    for stmt in layers:
        assert stmt.name, "build_graph takes an expanded program"
        previous = add_layer(g, stmt, stmt.name, previous, outputs)
        outputs[stmt.name] = previous
    g.graph["output"] = previous
    check_connected(g)
    return g


def read_statement(g: nx.DiGraph, s: Statement, statements) -> None:
    """`model`, `loss` and `train`: the statements that are not layers."""
    if s.label or s.inputs is not None:
        raise ModelError(f"`{s.op}` is not a layer and takes no label or inputs", s.loc)
    if s.op == "model":
        if statements[0].op == "model" and s is not statements[0]:
            raise ModelError(f"a second `model` statement (the first is at line {statements[0].loc.line})", s.loc,
                             "keep one")
        if s is not statements[0]:
            raise ModelError("`model NAME` must be the first statement", s.loc, "move it to the top")
        g.graph["name"] = str(single_bare(s, "name", "model NAME, e.g. `model lenet5`").value)
    elif s.op == "loss":
        if g.graph["loss"]:
            raise ModelError("a second `loss` statement", s.loc, "keep one")
        value = single_bare(s, "name", "loss cross_entropy")
        if value.value not in ops.LOSSES:
            raise ModelError(f"unknown loss `{value.value}`", value.loc,
                             "the losses are: " + ", ".join(ops.LOSSES))
        g.graph["loss"] = value.value
        g.graph["loss_loc"] = s.loc
    elif s.op == "train":
        if g.graph["train"]:
            raise ModelError("a second `train` statement", s.loc, "keep one")
        g.graph["train"] = train_values(s)
        check_train(s, g.graph["train"])


def train_values(s: Statement) -> dict:
    """The train line's values; a wrong value's error says what its key does, when it says nothing else."""
    try:
        return keyed_values(s, ops.TRAIN_KEYS, "train", fill_defaults=False)
    except ModelError as e:
        key = next((a.key for a in s.args if a.key in ops.TRAIN_KEYS and e.loc in (a.loc, a.value.loc)), None)
        if e.hint is None and key is not None:
            e.hint = f"`{key}`: {ops.TRAIN_KEYS[key].doc} (docs/language.md, section 7)"
        raise


def check_train(s: Statement, values: dict) -> None:
    """Train keys that only work together; caught here rather than as a crash when training starts."""
    if values.get("nesterov") and not values.get("momentum"):
        nesterov = next(a for a in s.args if a.key == "nesterov")
        raise ModelError("nesterov=true needs a momentum above 0", nesterov.loc, "add momentum=0.9, for example")
    check_normalization(s, values)


def check_normalization(s: Statement, values: dict) -> None:
    """`normalize=auto` computes mean and std; `mean=` and `std=` give them, both or neither."""
    args = {a.key: a for a in s.args}
    for one, other in (("mean", "std"), ("std", "mean")):
        if one in values and other not in values:
            raise ModelError(f"`{one}` needs `{other}` too", args[one].loc,
                             f"add {other}=..., or write normalize=auto to compute both from the training images")
    if "mean" in values and "normalize" in values:
        raise ModelError("give `normalize` or `mean` and `std`, not both", args["normalize"].loc,
                         "normalize=auto computes mean and std; mean= and std= give them")


def single_bare(s: Statement, kind: str, usage: str) -> Value:
    if len(s.args) != 1 or s.args[0].key is not None or s.args[0].value.kind != kind:
        raise ModelError(f"`{s.op}` takes one {kind}", s.loc, f"write `{usage}`")
    return s.args[0].value


def add_layer(g, stmt: Statement, name: str, previous, outputs) -> str:
    """Adds the node(s) of one layer statement; returns the node that holds its output.
    `batchnorm=true` and `activation=` become nodes of their own after it, in that order."""
    op = known_op(stmt)
    attrs = keyed_values(stmt, op.keys, stmt.op)
    if op.name == "input":
        attrs = {"shape": input_shape(stmt)}
        if g.graph["input"]:
            raise ModelError("a second `input`", stmt.loc, "a model has one input")
        g.graph["input"] = name
    if op.name in ("maxpool", "avgpool") and attrs["stride"] is None:
        attrs["stride"] = attrs["size"]
    sources = input_names(stmt, op, previous, outputs)
    g.add_node(name, op=op.name, attrs=attrs, loc=stmt.loc, scope=stmt.scope, layer=name)
    for i, src in enumerate(sources):
        g.add_edge(src, name, index=i)
    last = name
    if attrs.get("batchnorm"):
        last = add_after(g, last, f"{name}.batchnorm", "batchnorm", keyed_values(
            replace(stmt, args=()), ops.OPS["batchnorm"].keys, "batchnorm"), stmt, name)
    if attrs.get("activation", "none") != "none":
        last = add_after(g, last, f"{name}.{attrs['activation']}", attrs["activation"], {}, stmt, name)
    return last


def add_after(g, before: str, node: str, op: str, attrs: dict, stmt: Statement, layer: str) -> str:
    """A node that a key of `layer` stands for (`conv1.batchnorm`, `conv1.relu`), taking `before`."""
    g.add_node(node, op=op, attrs=attrs, loc=stmt.loc, scope=stmt.scope, layer=layer)
    g.add_edge(before, node, index=0)
    return node


def known_op(stmt: Statement) -> ops.Op:
    op = ops.OPS.get(stmt.op)
    if op is None:
        guess = did_you_mean(stmt.op, list(ops.OPS) + list(ops.STATEMENTS))
        valid = ", ".join(list(ops.OPS) + list(ops.STATEMENTS))
        hint = (f"did you mean `{guess}`? " if guess else "") + f"the ops are: {valid}"
        raise ModelError(f"unknown op `{stmt.op}`", stmt.op_loc, hint)
    return op


def input_names(stmt: Statement, op: ops.Op, previous, outputs) -> list[str]:
    """The nodes a layer takes: the layer before it, or the ones its input list names."""
    if op.max_inputs == 0:
        if stmt.inputs is not None:
            raise ModelError("`input` takes no input list", stmt.op_loc)
        if previous is not None:
            raise ModelError("`input` must be the first layer", stmt.loc, "move it above the other layers")
        return []
    if previous is None:
        raise ModelError(f"`{stmt.op}` comes before the model's input", stmt.loc,
                         "the first layer is `input CxHxW`, e.g. `input 1x28x28`")
    if stmt.inputs is None:
        if op.min_inputs > 1:
            raise ModelError(f"`{stmt.op}` needs at least {op.min_inputs} inputs", stmt.loc,
                             f"name them: `{stmt.op}(a, b)`")
        return [previous]
    refs = stmt.inputs
    if len(refs) < op.min_inputs or (op.max_inputs is not None and len(refs) > op.max_inputs):
        wanted = f"at least {op.min_inputs}" if op.max_inputs is None else str(op.max_inputs)
        raise ModelError(f"`{stmt.op}` takes {wanted} input{'s' if wanted != '1' else ''}, "
                         f"not {len(refs)}", stmt.loc)
    seen = set()
    for ref in refs:
        if ref.name in seen:
            given = ref.loc.text[ref.loc.column - 1:ref.loc.column - 1 + ref.loc.width]  # as written, not resolved
            raise ModelError(f"`{given}` is listed twice", ref.loc, "a layer takes each input once")
        seen.add(ref.name)
    return [outputs[r.name] for r in refs]


def input_shape(stmt: Statement) -> tuple[int, ...]:
    usage = "write `input CxHxW`, e.g. `input 1x28x28` or `input 3x32x32`"
    bare = [a for a in stmt.args if a.key is None]
    if len(bare) > 1:
        raise ModelError(f"unexpected value `{bare[1].value.text}` after the input's shape", bare[1].loc, usage)
    if len(bare) != 1 or bare[0].value.kind not in ("dims", "int"):
        raise ModelError("`input` needs a shape", stmt.loc, usage)
    value = bare[0].value
    dims = value.value if value.kind == "dims" else (value.value,)
    if len(dims) != 3:
        raise ModelError(f"input shape `{value.text}` has {len(dims)} dimension(s), not 3", value.loc, usage)
    if min(dims) < 1:
        raise ModelError(f"input shape `{value.text}` has a zero dimension", value.loc, usage)
    return tuple(dims)


def keyed_values(stmt: Statement, keys: dict[str, ops.Key], what: str, fill_defaults=True) -> dict:
    """The statement's key=value pairs checked against the op's keys, defaults filled in."""
    given: dict[str, Arg] = {}
    for arg in stmt.args:
        if arg.key is None:
            if what == "input":
                continue
            raise ModelError(f"unexpected value `{arg.value.text}`", arg.loc,
                             f"`{what}` takes key=value pairs: " + ", ".join(keys) if keys
                             else f"`{what}` takes no values")
        if arg.key not in keys:
            raise unknown_key(arg, keys, what)
        if arg.key in given:
            raise ModelError(f"`{arg.key}` is given twice", arg.loc, "keep one")
        given[arg.key] = arg
    values = {}
    for key, spec in keys.items():
        if key in given:
            values[key] = check_value(given[key], spec)
        elif spec.default is ops.REQUIRED:
            raise ModelError(f"`{what}` needs `{key}`", stmt.loc, f"add {key}=..., {spec.doc}")
        elif fill_defaults:
            values[key] = spec.default
    return values


def unknown_key(arg: Arg, keys, what: str) -> ModelError:
    if not keys:
        hint = "write `input CxHxW`, e.g. `input 1x28x28`" if what == "input" else f"`{what}` takes no keys"
        return ModelError(f"`{what}` has no key `{arg.key}`", arg.loc, hint)
    guess = did_you_mean(arg.key, keys)
    hint = (f"did you mean `{guess}`? " if guess else "") + f"the keys of `{what}` are: " + ", ".join(keys)
    return ModelError(f"`{what}` has no key `{arg.key}`", arg.loc, hint)


def check_value(arg: Arg, spec: ops.Key):
    """The value of one key, normalized, or a ModelError saying what kind of value it takes."""
    v = arg.value
    kind = spec.kind

    def wrong(expected: str):
        return ModelError(f"`{arg.key}` must be {expected}, not `{v.text}`", v.loc)

    if kind == "count":
        if v.kind != "int" or v.value < 1:
            raise wrong("a positive integer")
        return v.value
    if kind == "nonnegative_int":
        if v.kind != "int" or v.value < 0:
            raise wrong("an integer >= 0")
        return v.value
    if kind == "pair":
        return positive_pair(v, wrong)
    if kind == "nonnegative_pair":
        if v.kind == "int" and v.value >= 0:
            return (v.value, v.value)
        if v.kind == "dims" and len(v.value) == 2:
            return v.value
        if v.kind == "name" and v.value in ops.PADDINGS:
            raise ModelError(f"`{arg.key}` must be an integer >= 0 or HxW, not `{v.text}`", v.loc,
                             "a transposed convolution takes its padding in numbers: output = (input - 1) * "
                             "stride - 2 * padding + size + output_padding; for twice the input use size=2 "
                             "stride=2, or size=4 stride=2 padding=1")
        raise wrong("an integer >= 0 or HxW")
    if kind == "padding":
        if v.kind == "name":
            if v.value not in ops.PADDINGS:
                raise wrong("valid, same, full, an integer or HxW")
            return v.value
        if v.kind == "int" and v.value >= 0:
            return (v.value, v.value)
        if v.kind == "dims" and len(v.value) == 2:
            return v.value
        raise wrong("valid, same, full, an integer >= 0 or HxW")
    if kind == "bool":
        if v.kind != "bool":
            raise wrong("true or false")
        return v.value
    if kind == "activation":
        if v.kind != "name" or v.value not in ops.ACTIVATIONS:
            raise wrong("one of " + ", ".join(ops.ACTIVATIONS))
        return v.value
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split(",")
        if v.kind != "name" or v.value not in choices:
            raise wrong("one of " + ", ".join(choices))
        return v.value
    number = float(v.value) if v.kind in ("int", "float") else None
    if number is not None and not math.isfinite(number):
        raise wrong("a finite number")
    if kind == "positive" and (number is None or number <= 0):
        raise wrong("a number > 0")
    if kind == "nonnegative" and (number is None or number < 0):
        raise wrong("a number >= 0")
    if kind == "fraction" and (number is None or not 0 <= number < 1):
        raise wrong("a number from 0 up to (not including) 1")
    if kind == "number" and number is None:
        raise wrong("a number")
    assert number is not None, kind
    return number


def positive_pair(v: Value, wrong) -> tuple[int, int]:
    if v.kind == "int" and v.value >= 1:
        return (v.value, v.value)
    if v.kind == "dims" and len(v.value) == 2 and min(v.value) >= 1:
        return v.value
    raise wrong("a positive integer or HxW")


def check_connected(g: nx.DiGraph) -> None:
    """Every layer must contribute to the output: a dangling branch is a mistake, not dead code.
    The layer after it in the file took something else, and is most likely where it was meant to go."""
    needed = nx.ancestors(g, g.graph["output"]) | {g.graph["output"]}
    nodes = list(g.nodes)
    for i, node in enumerate(nodes):
        if node not in needed:
            name = shown(g, node)
            later = [n for n in nodes[i + 1:] if g.nodes[n].get("layer", n) == n and shown(g, n) != name
                     and g.nodes[n].get("scope") == g.nodes[node].get("scope") and g.nodes[n]["op"] != "input"]
            notes = []
            if later:
                taken = ", ".join(f"`{shown(g, s)}`" for s in inputs(g, later[0]))
                notes = [Note(f"the next layer, `{later[0]}`, takes {taken}; did you mean `{name}` there?",
                              g.nodes[later[0]]["loc"])]
            raise ModelError(f"the output of `{name}` is never used", g.nodes[node]["loc"],
                             f"the network's output is the last layer, `{shown(g, g.graph['output'])}`; "
                             "use this layer in an input list or remove it", notes)
