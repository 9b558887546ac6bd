"""A generated module made self-contained: the cnnc.kernels modules it uses are copied in.

What `cnnc compile --emit python` writes: a file that imports only numpy and numba (and the
standard library), runs on a machine without cnnc, and reads top to bottom.
"""
from __future__ import annotations

import ast
import re
from importlib import resources

KERNEL_IMPORT = re.compile(r"^from (?:cnnc\.kernels|\.)\.?(\w+) import .*$", re.M)


def kernel_source(module: str) -> str:
    return resources.files("cnnc.kernels").joinpath(f"{module}.py").read_text()


def split_module(source: str) -> tuple[list[str], str]:
    """(import lines, the rest without its docstring) of a kernel module."""
    tree = ast.parse(source)
    lines = source.splitlines()
    imports, drop = [], set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            span = range(node.lineno - 1, node.end_lineno)
            imports.append("\n".join(lines[i] for i in span))
            drop.update(span)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
            drop.update(range(node.lineno - 1, node.end_lineno))
    body = "\n".join(line for i, line in enumerate(lines) if i not in drop).strip("\n")
    return imports, body


def modules_in_order(source: str) -> list[str]:
    """The kernel modules the source imports, each after the kernel modules it imports itself."""
    ordered: list[str] = []

    def visit(module: str):
        if module in ordered:
            return
        for dep in KERNEL_IMPORT.findall(kernel_source(module)):
            visit(dep)
        ordered.append(module)

    for module in KERNEL_IMPORT.findall(source):
        visit(module)
    return ordered


def standalone(source: str) -> str:
    """The generated source with `from cnnc.kernels...` replaced by the kernels' own code."""
    modules = modules_in_order(source)
    imports: list[str] = []
    sections = []
    for module in modules:
        module_imports, body = split_module(kernel_source(module))
        imports += [i for i in module_imports if not KERNEL_IMPORT.match(i) and i not in imports]
        sections.append(f"# ---- kernels from cnnc/kernels/{module}.py ----\n\n{body}")
    head, _, rest = source.partition("\nimport numpy as np\n")
    rest = KERNEL_IMPORT.sub("", rest).lstrip("\n")
    imports = [i for i in imports if i not in ("import numpy as np", "from numba import njit")]
    parts = [head, "import numpy as np", "from numba import njit", *imports, "",
             *[s + "\n" for s in sections], "# ---- the model ----\n", rest]
    return "\n".join(parts)
