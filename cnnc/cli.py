"""The `cnnc` command: argument parsing, the call into the library, and exit codes only.

Exit status: 0 on success, 1 for a user's mistake (a diagnostic, never a traceback), 2 for
a usage error (argparse's own).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .diagnostics import CnncError

EMITS = ("summary", "python", "dot", "json")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except CnncError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnc", description="Compile, train and run CNNs described in .cnn files.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="check, optimize and compile a model; print its summary")
    c.add_argument("model", type=Path)
    c.add_argument("--emit", choices=EMITS, default="summary")
    c.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output")
    c.set_defaults(run=run_compile)

    d = sub.add_parser("dot", help="the graph as Graphviz DOT")
    d.add_argument("model", type=Path)
    d.add_argument("--stage", choices=("parsed", "optimized"), default="optimized")
    d.add_argument("--mode", choices=("inference", "training"), default="inference",
                   help="which pipeline `optimized` means (default: inference)")
    d.add_argument("-o", "--output", type=Path)
    d.set_defaults(run=run_dot)
    return p


def write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n")
    except OSError as err:
        raise CnncError(f"{output}: cannot write: {err.strerror or err}") from None


def run_compile(args) -> int:
    from .frontend import check_file, optimized

    parsed = check_file(args.model)
    graph, applied = optimized(parsed)
    if args.emit == "json":
        from .export.json import to_json

        write(to_json(graph), args.output)
    elif args.emit == "dot":
        from .export.dot import to_dot

        write(to_dot(graph), args.output)
    else:
        from .summary import render_summary

        write(render_summary(parsed, graph, applied), args.output)
    return 0


def run_dot(args) -> int:
    from .export.dot import to_dot
    from .frontend import check_file, optimized

    graph = check_file(args.model)
    if args.stage == "optimized":
        graph, _ = optimized(graph, args.mode)
    write(to_dot(graph), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
