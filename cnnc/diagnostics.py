"""Errors a user can cause, and how they print: ModelError for model files, DataError for data."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A place in a model file: 1-based line and column, the line's text and the span's width.

    `mark` is where the caret goes when it should point inside the statement the error is
    reported at (an unknown name in an input list); it defaults to the column.
    """

    file: str
    line: int
    column: int
    text: str = ""
    width: int = 1
    mark: int | None = None


class CnncError(Exception):
    """A mistake in what the user gave cnnc; the command line prints it and exits with status 1."""

    def render(self) -> str:
        return str(self)


class ModelError(CnncError):
    """A mistake in a model file, located at a line and column, with an optional hint."""

    def __init__(self, message: str, loc: Loc | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint

    @property
    def file(self) -> str | None:
        return self.loc.file if self.loc else None

    @property
    def line(self) -> int | None:
        return self.loc.line if self.loc else None

    @property
    def column(self) -> int | None:
        return self.loc.column if self.loc else None

    def render(self) -> str:
        """The diagnostic as a compiler prints it: location, message, source line, caret, hint."""
        if self.loc is None:
            lines = [f"error: {self.message}"]
        else:
            loc = self.loc
            lines = [f"{loc.file}:{loc.line}:{loc.column}: error: {self.message}"]
            if loc.text:
                gutter = " " * len(str(loc.line))
                start = loc.mark or loc.column
                caret = " " * _display_width(loc.text[: start - 1]) + "^" * max(loc.width, 1)
                lines += [f" {loc.line} | {loc.text.expandtabs(1)}", f" {gutter} | {caret}"]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class DataError(CnncError):
    """A problem with a data set, an image or a weights file, naming the file and what is wrong."""

    def __init__(self, path, message: str, hint: str | None = None):
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"{self.path}: error: {self.message}"
        return text + (f"\nhint: {self.hint}" if self.hint else "")

    def __str__(self) -> str:
        return self.render()


class InputError(CnncError, ValueError):
    """Arrays handed to a compiled network that do not fit it (shape, dtype, labels)."""


def warn(message: str) -> None:
    """Something the user should know that does not stop the command: `warning: ...` on stderr."""
    import sys

    print(f"warning: {message}", file=sys.stderr)


def _display_width(prefix: str) -> int:
    return len(prefix.expandtabs(1))


def did_you_mean(word: str, choices) -> str | None:
    """The closest valid choice to a misspelt word, if one is close enough to suggest."""
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return close[0] if close else None
