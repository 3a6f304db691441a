"""MetaSchedule's logs go to files in the work directory, never to the console.

MetaSchedule logs every trial and a statistics table after every batch; its
own ``get_loggers_from_work_dir`` also attaches a console handler. Here the
package logger writes ``logs/tuning.log`` (task scheduler, cost model,
runners), each task writes ``logs/task_NN_<name>.log`` (its design spaces
and every trial), and what TVM's C++ code prints to stderr goes to
``logs/native.log``, so the console shows only our progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence, TextIO

PACKAGE_LOGGER = "tvm.s_tir.meta_schedule"  # MetaSchedule's modules log under this name
_FORMAT = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def native_stderr_to(path: Path) -> Iterator[TextIO]:
    """Point file descriptor 2 at ``path``; yields a text stream to the real stderr (for the progress bar)."""
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield console
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.close()


@contextlib.contextmanager
def to_files(log_dir: Path, task_names: Sequence[str]) -> Iterator[list[logging.Logger]]:
    """Route MetaSchedule's logging into ``log_dir`` while tuning; yields one logger per task."""
    log_dir.mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(task_names) - 1, 0)))
    package = logging.getLogger(PACKAGE_LOGGER)
    saved = (package.level, package.propagate, list(package.handlers))
    handlers = [_file_handler(log_dir / "tuning.log")]
    package.handlers = [handlers[0]]
    package.setLevel(logging.INFO)
    package.propagate = False
    loggers = []
    for i, name in enumerate(task_names):
        logger = logging.getLogger(f"{PACKAGE_LOGGER}.task_{i:0{width}d}_{name[:100]}")
        handlers.append(_file_handler(log_dir / f"task_{i:0{width}d}_{name[:100]}.log"))
        logger.handlers = [handlers[-1]]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        loggers.append(logger)
    try:
        yield loggers
    finally:
        for handler in handlers:
            handler.close()
        for logger in loggers:
            logger.handlers = []
        package.setLevel(saved[0])
        package.propagate = saved[1]
        package.handlers = saved[2]


def _file_handler(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(_FORMAT)
    return handler
