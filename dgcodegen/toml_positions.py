"""Find where a key and its string value sit in the text of a TOML file.

`tomllib` returns values without positions, so error messages about a spec file need
the raw text. `TomlPositions` scans it line by line for `[table]` headers and
`key = ...` lines, and decodes a string value by hand to map each character of the
parsed string back to its line and column in the file.

Limits: keys are found only as bare or quoted keys at the start of a line inside a
`[table]` header of a single bare name, not as dotted keys or inside inline tables.
A multi-line string whose own lines look like a table header or a `key =` line can
mislead the scan. Every decoded string is compared with the value from `tomllib`, and
when they differ only the key's line is reported, never a wrong column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?")
_KEY = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"([^"\\]*)"|'([^']*)')\s*=\s*""")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}

Position = tuple[int, int]
"""1-based line and 1-based column in the file."""


class TomlPositions:
    """Positions of keys and string values in one TOML file.

    Args:
        path: the file, used in messages.
        text: its contents.
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.split("\n")
        self.keys: dict[tuple[str, str], Position] = {}
        table = ""
        for number, line in enumerate(self.lines, start=1):
            header = _HEADER.fullmatch(line.rstrip("\r"))
            if header:
                table = header.group(1)
                continue
            key = _KEY.match(line)
            if key:
                name = next(group for group in key.groups() if group is not None)
                self.keys.setdefault((table, name), (number, key.end() + 1))

    def where(self, table: str, key: str | None = None) -> str:
        """Return "path:line" for the key's line, or "path" when it is not found."""
        position = self.keys.get((table, key)) if key is not None else None
        if position is None:
            return str(self.path)
        return f"{self.path}:{position[0]}"

    def string_locator(self, table: str, key: str, value: str) -> Callable[[int, int], str]:
        """Return a function from a position in the string `value` to "path:line:column".

        The function takes a 1-based line and a 0-based column within `value`, as the
        `ast` module counts them. It falls back to "path:line" of the key when the string
        cannot be mapped, and to "path" when the key is not found.
        """
        start = self.keys.get((table, key))
        positions = _decode(self.lines, start) if start else None
        if positions is None or positions[0] != value:
            fallback = self.where(table, key)
            return lambda line, column: fallback
        _, places = positions
        starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", value)]

        def locate(line: int, column: int) -> str:
            index = starts[min(line, len(starts)) - 1] + column
            row, col = places[min(index, len(places) - 1)]
            return f"{self.path}:{row}:{col}"

        return locate


def _decode(lines: list[str], start: Position) -> tuple[str, list[Position]] | None:
    """Decode the string value that begins at `start`, with the file position of each character.

    Returns the decoded text and one position per character plus one for the closing
    quote, or None when the value there is not a string this decoder handles.
    """
    row, col = start[0] - 1, start[1] - 1
    line = lines[row]
    for quote in ('"""', "'''", '"', "'"):
        if line.startswith(quote, col):
            break
    else:
        return None
    literal, multiline = quote[0] == "'", len(quote) == 3
    col += len(quote)
    if multiline and col >= len(line.rstrip("\r")):
        row, col = row + 1, 0  # a line break right after the opening quotes is dropped
    text: list[str] = []
    places: list[Position] = []
    while row < len(lines):
        line = lines[row]
        if col >= len(line.rstrip("\r")):
            if not multiline:
                return None
            text.append("\n")
            places.append((row + 1, col + 1))
            row, col = row + 1, 0
            continue
        if line.startswith(quote, col):
            places.append((row + 1, col + 1))
            return "".join(text), places
        character = line[col]
        if character == "\\" and not literal:
            decoded = _escape(lines, row, col, multiline)
            if decoded is None:
                return None
            value, row_after, col_after = decoded
            text.extend(value)
            places.extend([(row + 1, col + 1)] * len(value))
            row, col = row_after, col_after
            continue
        text.append(character)
        places.append((row + 1, col + 1))
        col += 1
    return None


def _escape(lines: list[str], row: int, col: int, multiline: bool) -> tuple[str, int, int] | None:
    """Decode the escape at `lines[row][col]` and return its text and the position after it."""
    line = lines[row]
    rest = line[col + 1 :]
    if rest[:1] in _ESCAPES:
        return _ESCAPES[rest[0]], row, col + 2
    for letter, width in (("u", 4), ("U", 8)):
        digits = rest[1 : 1 + width]
        if rest[:1] == letter and re.fullmatch(f"[0-9A-Fa-f]{{{width}}}", digits):
            code = int(digits, 16)
            return (chr(code), row, col + 2 + width) if code <= 0x10FFFF else None
    if multiline and rest.strip() == "":
        # A backslash at the end of a line drops it and the whitespace that follows.
        row += 1
        while row < len(lines) and lines[row].strip() == "":
            row += 1
        if row == len(lines):
            return None
        return "", row, len(lines[row]) - len(lines[row].lstrip())
    return None
