"""One writer per records directory: an OS file lock that dies with its process.

A tune holds :class:`RecordsLock` on ``WORK_DIR/<target>/<model>/tune.lock``
(``fcntl.flock``, exclusive) while it writes that directory's records. The
kernel drops the lock when the process ends, however it ends, so a lock is
never stale and nothing has to be cleaned up by hand. The file also holds a
line saying which process has it, for the message a second tune prints while
it waits (or the error it raises with ``--no-wait``).

:func:`rewriting` is a second, short lock: a tune that sets damaged lines
aside rewrites both database files, and readers hold it shared while they
read the pair, so they never match records of the new file with workloads of
the old one. Readers never wait for a tune that is merely appending.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from tvm_shuffle.errors import UserError

LOCK_FILE = "tune.lock"
REWRITE_LOCK_FILE = ".rewrite.lock"

# Directories whose lock this process holds: a second acquire here would wait for itself forever.
_HELD_HERE: set[str] = set()


class RecordsBusy(UserError):
    """Another tune writes these records and the caller asked not to wait."""


class RecordsLock:
    """The exclusive right to write the records in ``directory``; release it (or end the process) to hand it on."""

    def __init__(self, directory: Path, fd: int):
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | Path, *, wait: bool = True,
                log: Callable[[str], None] | None = None) -> "RecordsLock":
        """Take the lock, waiting for a tune that holds it (saying so once), or raise :class:`RecordsBusy`."""
        directory = Path(directory)
        log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        path = directory / LOCK_FILE
        if str(path.resolve()) in _HELD_HERE:
            raise RuntimeError(f"this process already holds the records lock {path}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot open the records lock {path}: {err.strerror or err}") from None
        try:
            if not _try_lock(fd, fcntl.LOCK_EX):
                holder = describe_holder(path)
                if not wait:
                    raise RecordsBusy(f"the tuning records in {directory} are being written by {holder}; "
                                      "wait for it to finish (run without --no-wait to queue behind it)")
                log(f"waiting for {holder}, which is writing the tuning records in {directory} "
                    "(the lock goes when that process ends)")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_line().encode("utf-8"), 0)
        _HELD_HERE.add(str(path.resolve()))
        return cls(directory, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _HELD_HERE.discard(str((self.directory / LOCK_FILE).resolve()))
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> "RecordsLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def holder_line() -> str:
    """What the lock file says about this process: its id, command line and start time."""
    command = " ".join(sys.argv) if sys.argv and sys.argv[0] else sys.executable
    return f"process {os.getpid()} ({command[:200]}), since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"


def describe_holder(path: Path) -> str:
    """The holder's line from the lock file, or a generic description while it is being rewritten."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def rewriting(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the rewrite lock: exclusive to replace the database files, shared to read them as a pair.

    A reader that cannot create the lock file (a read-only copy of the
    records) reads without it: nothing rewrites such a directory.
    """
    try:
        fd = os.open(directory / REWRITE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _try_lock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
