"""Reading text files line by line, and the one-line messages that io errors are said in.

A byte that does not decode is a :class:`~corral.errors.SourceError` naming the line, the byte
and how to fix the file (re-save it as UTF-8, or set ``encoding:``).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Generator
from pathlib import Path

from corral.errors import SourceError

#: said after a path that a user may have to fix in the job file
PATH_HINT = "(paths are relative to the job file's folder)"


def one_line(e: BaseException) -> str:
    """An exception's message with all whitespace runs (newlines too) collapsed to one space."""
    return " ".join(str(e).split()) or type(e).__name__


def os_reason(what: str, e: OSError) -> str:
    """``what`` failed, and the operating system's reason."""
    return f"{what}: {e.strerror or one_line(e)}"


def decode_error(path: Path, encoding: str, where: str, byte: int | None) -> SourceError:
    """The error of a source file whose text at ``where`` (``line 3``) does not decode."""
    shown = f" has the byte 0x{byte:02x}," if byte is not None else ""
    return SourceError(
        f"source file {path} is not valid {encoding}: {where}{shown} which cannot be decoded — "
        f"re-save the file as UTF-8, or set `encoding:` under `source:` to the file's encoding "
        f"(e.g. latin-1)"
    )


def iter_text_lines(path: Path, encoding: str) -> Generator[str, None, None]:
    """Yield the decoded physical lines of a text file (line endings kept, BOM removed).

    Bytes that do not decode raise :class:`SourceError` naming the line and the byte. Memory use
    is one line at a time.
    """
    name = codecs.lookup(encoding).name
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SourceError(os_reason(f"cannot read source file {path}", e)) from e
    with f:
        if name.startswith(("utf-16", "utf-32")):
            # Multi-byte code units: let a text wrapper split lines, lose exact byte positions.
            text = io.TextIOWrapper(f, encoding=encoding, newline="")
            n = 0
            try:
                for line in text:
                    if n == 0 and line.startswith("\ufeff"):
                        line = line[1:]
                    n += 1
                    yield line
            except UnicodeDecodeError:
                raise decode_error(path, encoding, f"the text after line {n}", None) from None
            return
        n = 0
        for raw in f:
            n += 1
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise decode_error(path, encoding, f"line {n}", raw[e.start]) from None
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield line
