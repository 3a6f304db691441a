"""The two line files of a tuning database, read and written whole lines at a time.

Nothing here imports TVM: it is bytes and JSON. A line is complete once its
newline is on disk: a writer appends each line, newline included, in one
``write`` to a file opened with ``O_APPEND``, so a reader that keeps only
newline-terminated lines never sees a record that is still being written,
and two appends never mix. What follows the last newline is either a line
being written right now or one a dead process left unfinished; only the
holder of the records lock (:mod:`tvm_shuffle.tuning.lock`) may decide it
is the latter and set it aside.

Lines that do not parse are moved, byte for byte, to a side file
(``<file>.damaged``) and the file is replaced by its readable lines through a
temporary file and an atomic rename, so a crash during the repair leaves
either the old file or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from tvm_shuffle.errors import UserError

DAMAGED_SUFFIX = ".damaged"


def split_complete(data: bytes) -> tuple[list[bytes], bytes]:
    """The newline-terminated lines of ``data`` (newlines removed) and the unterminated rest."""
    *lines, tail = data.split(b"\n")
    return lines, tail


def read_bytes(path: Path) -> bytes:
    """The file's content, or nothing when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def count_complete(path: Path) -> int:
    """Non-blank complete lines in ``path``."""
    lines, _ = split_complete(read_bytes(path))
    return sum(1 for line in lines if line.strip())


def json_values(line: bytes) -> list[tuple[Any, bytes]] | None:
    """Each JSON value on ``line`` with its own bytes; ``None`` when the line is not a sequence of JSON values.

    A line normally holds one value. Two writers appending to one file
    without a lock (what MetaSchedule's own ``JSONDatabase`` does: the line
    and its newline are two writes) leave two records on one line, each
    whole: they are split here rather than thrown away.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    decoder = json.JSONDecoder()
    values, position = [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return values or None
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            return None
        values.append((value, text[position:end].encode("utf-8")))
        position = end


class LineAppender:
    """Appends whole lines to one file: one ``write`` per line, undone if it fails half-way (a full disk)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, line: bytes) -> None:
        if b"\n" in line:
            raise ValueError("a record line cannot contain a newline")
        data = line + b"\n"
        start = os.fstat(self._fd).st_size
        written = 0
        try:
            while written < len(data):  # one write; a second only after a short write (a signal, a full disk)
                written += os.write(self._fd, data[written:])
        except OSError as err:
            try:
                os.ftruncate(self._fd, start)  # no partial line stays behind
            except OSError:
                pass
            raise UserError(f"cannot write a tuning record to {self.path}: {err.strerror or err}; "
                            "the records written before it are kept") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def replace_file(path: Path, lines: Iterable[bytes]) -> None:
    """Make ``path`` hold exactly ``lines``, through a synced temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for line in lines:
            f.write(line + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_directory(path.parent)


def set_aside(path: Path, lines: Iterable[bytes]) -> Path:
    """Append ``lines`` to ``path``'s side file (``<name>.damaged``), synced before the caller drops them."""
    side = path.with_name(path.name + DAMAGED_SUFFIX)
    with open(side, "ab") as f:
        for line in lines:
            f.write(line + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return side


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
