"""MetaSchedule builder that compiles candidates in the tuning process.

TVM's ``LocalBuilder`` starts a fresh pool of worker processes for every batch,
and every worker imports ``tvm.s_tir.tensor_intrin`` (TVMScript parsing) inside
the timed build: on 2 cores that takes most of the 30 s timeout, so tuning
stalls (see ../shared/notes/tvm-0.27-field-notes.md). Here the import
happens once, when the first ``TuneContext`` is made, and each batch is
compiled by a few threads of this process (TVM's compiler runs in C++ and
the linker is a subprocess, so threads overlap). Every candidate is linked
into a shared library, with the target's cross-compiler when it has one, so a
local runner and an RPC server on a board without a compiler both load it as is.

A candidate whose compile runs past ``timeout_s`` is a failed build: LLVM
can spend many minutes on one candidate with a huge unrolled body, and
tuning would wait on it. A thread cannot be stopped, so that compile is left
to finish on a daemon thread (``BuildStats.abandoned``) while tuning goes on.
A tuning run waits for such compiles before it returns, since what comes
next is timed, and so does the process at exit: the C++ teardown that follows
the interpreter's aborts the process under a thread still inside LLVM
("terminate called without an active exception"), a crash after every
record was saved, but a crash.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import warnings

from tvm_shuffle import tvm_compat
from tvm_shuffle.tvm_compat import cc, derived_object, ms

ARTIFACT = "candidate.so"
# Candidates compile in 0.1-2 s here; a minute means LLVM is stuck on a huge unrolled body.
BUILD_TIMEOUT_S = 60.0

# default_build calls tvm.driver.build, which warns on every call; set once,
# because warnings.catch_warnings is not safe in the builder's threads.
warnings.filterwarnings("ignore", message="build is deprecated", category=DeprecationWarning)

# Worker threads that were still compiling when their batch gave up on them.
_ABANDONED: list[threading.Thread] = []


@atexit.register
def finish_abandoned_compiles() -> None:
    """Wait for the compiles the builder gave up on, so none is inside LLVM when the process tears down."""
    running = [thread for thread in _ABANDONED if thread.is_alive()]
    if running:
        print(f"waiting for {len(running)} compile(s) that ran past the tuning builder's timeout to finish",
              file=sys.stderr)
    for thread in running:
        thread.join()


@dataclasses.dataclass
class BuildStats:
    """Wall time spent in :meth:`InProcessBuilder.build`, per batch."""

    batches: int = 0
    candidates: int = 0
    seconds: float = 0.0
    abandoned: int = 0  # compiles that ran past the timeout, left running on daemon threads

    @property
    def seconds_per_candidate(self) -> float:
        return self.seconds / self.candidates if self.candidates else 0.0


def compile_candidate(mod, target):
    """The stock builder's compile step (``default_build``).

    It drops a weight-packing block and lets the kernel take packed weights,
    as the build does once on the constants: a default 1x1 schedule is
    measured as it will run (the candidate's ``args_info`` has the packed shape).
    """
    tvm_compat.import_tensor_intrinsics()  # default_build imports them, minutes with PyTorch loaded
    with target:  # CUDA device code needs the target's arch in scope
        return ms.builder.local_builder.default_build(mod, target, None)


def export_candidate(rt_mod, compiler: str | None) -> str:
    """Link ``rt_mod`` into ``<fresh dir>/candidate.so``; MetaSchedule deletes the dir after measuring."""
    directory = tempfile.mkdtemp(prefix="tvm_shuffle_candidate_")
    path = os.path.join(directory, ARTIFACT)
    try:
        if compiler:
            rt_mod.export_library(path, fcompile=cc.cross_compiler(compiler))
        else:
            rt_mod.export_library(path)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return path


class _Batch:
    """One call's candidates: a queue the threads take from, and the results they hand back."""

    def __init__(self, build_inputs):
        self.pending: queue.Queue = queue.Queue()
        for item in enumerate(build_inputs):
            self.pending.put(item)
        self.done: queue.Queue = queue.Queue()
        self.started: set[int] = set()
        self.closed = threading.Event()


@derived_object
class InProcessBuilder(ms.builder.PyBuilder):
    """Compile and link each candidate with ``threads`` threads of this process.

    ``compiler`` is the C++ (cross-)compiler that links the shared library
    (None: the host's). A candidate that fails to compile becomes a build error
    for MetaSchedule, as with the stock builder.
    """

    def __init__(self, compiler: str | None = None, *, threads: int = 2, timeout_s: float = BUILD_TIMEOUT_S):
        super().__init__()
        self.compiler = compiler
        self.threads = max(1, threads)
        self.timeout_s = timeout_s
        self.stats = BuildStats()

    def build(self, build_inputs):
        start = time.perf_counter()
        batch = _Batch(build_inputs)
        workers = [threading.Thread(target=self._work, args=(batch,), daemon=True)
                   for _ in range(min(self.threads, len(build_inputs)))]
        for worker in workers:
            worker.start()
        results = [None] * len(build_inputs)
        for _ in build_inputs:
            try:
                index, result = batch.done.get(timeout=self.timeout_s)
            except queue.Empty:
                break
            results[index] = result
        batch.closed.set()
        if None in results:
            _ABANDONED.extend(worker for worker in workers if worker.is_alive())
        for index, result in enumerate(results):
            if result is None:
                stuck = index in batch.started
                self.stats.abandoned += stuck
                why = f"compile ran past {self.timeout_s:.0f} s; abandoned" if stuck else "not compiled: builder stuck"
                results[index] = ms.builder.BuilderResult(None, f"InProcessBuilder: {why}")
        self.stats.batches += 1
        self.stats.candidates += len(build_inputs)
        self.stats.seconds += time.perf_counter() - start
        return results

    def _work(self, batch: "_Batch") -> None:
        while not batch.closed.is_set():
            try:
                index, build_input = batch.pending.get_nowait()
            except queue.Empty:
                return
            batch.started.add(index)
            result = self._build_one(build_input)
            if batch.closed.is_set():  # too late: nobody will measure or delete it
                if result.artifact_path:
                    shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
                return
            batch.done.put((index, result))

    def _build_one(self, build_input):
        try:
            rt_mod = compile_candidate(build_input.mod, build_input.target)
            return ms.builder.BuilderResult(export_candidate(rt_mod, self.compiler), None)
        except Exception as err:  # a candidate that does not compile is a failed trial, not a failed run
            return ms.builder.BuilderResult(None, f"InProcessBuilder: {type(err).__name__}: {err}")
