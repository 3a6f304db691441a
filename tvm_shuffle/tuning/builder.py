"""MetaSchedule builder that compiles candidates in the tuning process.

TVM's ``LocalBuilder`` starts a fresh pool of worker processes for every batch,
and every worker imports ``tvm.s_tir.tensor_intrin`` (TVMScript parsing) inside
the timed build: 17-28 s on our 2-core machines, against a 30 s timeout, so
tuning stalls (see ../shared/notes/tvm-0.27-field-notes.md). Here the import
happens once, when the first ``TuneContext`` is made, and each batch is
compiled by a few threads of this process (TVM's compiler runs in C++ and
the linker is a subprocess, so threads overlap). Every candidate is linked
into a shared library, with the target's cross-compiler when it has one, so a
local runner and an RPC server on a board without a compiler both load it as is.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import tempfile
import time
import warnings

from tvm_shuffle.tvm_compat import cc, derived_object, ms

ARTIFACT = "candidate.so"

# default_build calls tvm.driver.build, which warns on every call; set once,
# because warnings.catch_warnings is not safe in the builder's threads.
warnings.filterwarnings("ignore", message="build is deprecated", category=DeprecationWarning)


@dataclasses.dataclass
class BuildStats:
    """Wall time spent in :meth:`InProcessBuilder.build`, per batch."""

    batches: int = 0
    candidates: int = 0
    seconds: float = 0.0

    @property
    def seconds_per_candidate(self) -> float:
        return self.seconds / self.candidates if self.candidates else 0.0


def compile_candidate(mod, target):
    """The stock builder's compile step (``default_build``)."""
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


@derived_object
class InProcessBuilder(ms.builder.PyBuilder):
    """Compile and link each candidate with ``threads`` threads of this process.

    ``compiler`` is the C++ (cross-)compiler that links the shared library
    (None: the host's). A candidate that fails to compile becomes a build error
    for MetaSchedule, as with the stock builder.
    """

    def __init__(self, compiler: str | None = None, *, threads: int = 2):
        super().__init__()
        self.compiler = compiler
        self.threads = max(1, threads)
        self.stats = BuildStats()

    def build(self, build_inputs):
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            results = list(pool.map(self._build_one, build_inputs))
        self.stats.batches += 1
        self.stats.candidates += len(build_inputs)
        self.stats.seconds += time.perf_counter() - start
        return results

    def _build_one(self, build_input):
        try:
            rt_mod = compile_candidate(build_input.mod, build_input.target)
            return ms.builder.BuilderResult(export_candidate(rt_mod, self.compiler), None)
        except Exception as err:  # a candidate that does not compile is a failed trial, not a failed run
            return ms.builder.BuilderResult(None, f"InProcessBuilder: {type(err).__name__}: {err}")
