"""One error type for everything a user can get wrong.

CLIs catch :class:`UserError` and print its message as one line with a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """Bad input: a missing file, an unknown name, a wrong shape."""


class MissingRecords(UserError):
    """A tuned build was asked for, and the work directory holds no tuning records for the model."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during tuning: every record measured so far is kept; the message says how to resume."""


def unknown_name(kind: str, name: str, valid: Sequence[str]) -> UserError:
    return UserError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")


def cli_entry(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a ``main(argv) -> int`` so user errors print one line and exit 2."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            print(f"error: {err or 'interrupted'}", file=sys.stderr)
            return 130

    return wrapped
