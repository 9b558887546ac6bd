"""Errors a user can cause, and how they print: ModelError for model files, DataError for data."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A place in a model file: 1-based line and column, the line's text and the span's width.

    `mark` is where the caret goes when it should point inside the statement the error is
    reported at (an unknown name in an input list); it defaults to the column. `via` is, for a
    place inside a block's definition, the chain of block uses that brought it in, innermost
    first: a diagnostic there shows each use as a note.
    """

    file: str
    line: int
    column: int
    text: str = ""
    width: int = 1
    mark: int | None = None
    via: tuple["Note", ...] = ()


@dataclass(frozen=True)
class Note:
    """A second place a diagnostic shows, after the error's own: `file:line:col: note: message`."""

    message: str
    loc: Loc


class CnncError(Exception):
    """A mistake in what the user gave cnnc; the command line prints it and exits with status 1."""

    def render(self) -> str:
        return str(self)


class ModelError(CnncError):
    """A mistake in a model file, located at a line and column, with an optional hint."""

    def __init__(self, message: str, loc: Loc | None = None, hint: str | None = None, notes=()):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint
        self.notes = tuple(notes)

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
        """The diagnostic as a compiler prints it: location, message, source line, caret, hint.
        What comes from the user's files is made printable (see `printable`)."""
        if self.loc is None:
            lines = [f"error: {printable(self.message)}"]
        else:
            lines = _quoted(self.loc, "error", self.message)
            for note in self.loc.via + self.notes:
                lines += _quoted(note.loc, "note", note.message)
        if self.hint:
            lines.append(f"hint: {printable(self.hint)}")
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
        text = printable(f"{self.path}: error: {self.message}")
        return text + (f"\nhint: {printable(self.hint)}" if self.hint else "")

    def __str__(self) -> str:
        return self.render()


class InputError(CnncError, ValueError):
    """Arrays handed to a compiled network that do not fit it (shape, dtype, labels)."""


def _quoted(loc: Loc, severity: str, message: str) -> list[str]:
    """`file:line:col: severity: message`, then the source line with a caret under the place."""
    lines = [printable(f"{loc.file}:{loc.line}:{loc.column}: {severity}: {message}")]
    if loc.text:
        gutter = " " * len(str(loc.line))
        shown, caret = source_window(loc.text, loc.mark or loc.column, max(loc.width, 1))
        lines += [f" {loc.line} | {shown}", f" {gutter} | {caret}"]
    return lines


def warn(message: str) -> None:
    """Something the user should know that does not stop the command: `warning: ...` on stderr."""
    import sys

    print(f"warning: {message}", file=sys.stderr)


WINDOW = 100  # characters of a long source line shown around the column


def printable(text: str) -> str:
    """Text that prints as itself on a terminal: a tab as one space; control characters, bidi
    overrides and other invisible format characters as escapes (`\\x1b`, `\\u202e`), so that a
    model file cannot move the cursor, colour the terminal or reorder what the user reads."""
    return "".join(_printable_char(ch) for ch in text)


def _printable_char(ch: str) -> str:
    if ch == "\t":
        return " "
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
    return ch


def source_window(text: str, column: int, width: int) -> tuple[str, str]:
    """The source line as shown, cut to WINDOW characters around `column` when longer, and the
    caret line under the `width` characters from `column` (1-based)."""
    start = min(max(column - 1, 0), len(text))
    begin = 0 if len(text) <= WINDOW else max(0, min(start - WINDOW // 2, len(text) - WINDOW))
    end = begin + WINDOW
    stop = min(start + width, max(end, start))
    before = ("..." if begin else "") + printable(text[begin:start])
    marked = printable(text[start:stop])
    shown = before + marked + printable(text[stop:end]) + ("..." if end < len(text) else "")
    return shown, " " * len(before) + "^" * max(len(marked), 1)


def did_you_mean(word: str, choices) -> str | None:
    """The closest valid choice to a misspelt word, if one is close enough to suggest."""
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return close[0] if close else None
