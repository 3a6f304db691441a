"""Evolutionary search that resumes from the database instead of repeating it.

MetaSchedule's ``EvolutionarySearch`` seeds its population with the best
records in the database, but it only remembers what it measured in the
current run (upstream TODO in ``evolutionary_search.cc``: "add records from
the database to avoid re-measuring"). After an interruption it would send
the best old candidates to the runner again. :class:`ResumingSearch` wraps it:

* candidates whose scheduled TIR (structural hash) already has a record in
  the database (a failed build or run too: those fail again), or was sent
  earlier in this run, are dropped before they reach the builder;
* all tasks draw from one :class:`Budget`, so a run measures exactly what is
  left of ``--trials`` (MetaSchedule checks its global limit only before a
  batch, and overshoots by up to a batch);
* the task's default schedule (``first``: the hand-written one from
  :mod:`tvm_shuffle.schedules`, or the unscheduled kernel) is measured before
  anything else, so the evolutionary search starts from it and the build
  keeps it wherever tuning finds nothing faster (MetaSchedule's candidates
  are all multi-threaded, which loses on kernels of a few microseconds);
* the shared XGBoost cost model is first trained on the earlier records, so
  the search continues where it stopped rather than from a cold model;
* the population is sized to the batch (:func:`population_size`).
"""

from __future__ import annotations

from tvm_shuffle.tuning import database as records
from tvm_shuffle.tvm_compat import Schedule, derived_object, ms


def unscheduled_candidate(mod) -> "ms.MeasureCandidate":
    """The kernel as the build compiles it when nothing schedules it (an empty trace)."""
    return ms.MeasureCandidate(Schedule(mod), ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


# Rounds in a row without a new candidate before a task is declared exhausted
# (MetaSchedule's own evolutionary search gives up after 5 empty rounds too).
MAX_EMPTY_ROUNDS = 5


def population_size(per_batch: int) -> int:
    """Schedules the evolutionary search evolves to pick ``per_batch`` candidates from.

    MetaSchedule's 512 costs ~10 s of sampling, mutation and cost-model
    scoring per batch on 2 cores, whatever the batch size: most of a tuning
    run's time at the small batches a 2-core budget gives (106 s -> 28 s for
    16 trials of the test model here). Eight schedules per candidate
    measured keep the selection pressure of its defaults (512 for a batch
    of 64), never fewer than 128.
    """
    return max(128, min(512, 8 * per_batch))


class Budget:
    """Candidates this run may still send to the builder, shared by every task's strategy."""

    def __init__(self, trials: int):
        self.left = trials


@derived_object
class ResumingSearch(ms.search_strategy.PySearchStrategy):
    """A search strategy (``EvolutionarySearch`` by default) that never proposes a measured candidate."""

    # per_batch defaults to MetaSchedule's own batch, so an unsized search keeps its population of 512.
    def __init__(self, budget: Budget, first=(), inner=None, *, per_batch: int = 64):
        super().__init__()
        self.budget = budget
        self.first = list(first)  # MeasureCandidates to measure before searching
        self.inner = inner if inner is not None else \
            ms.search_strategy.EvolutionarySearch(population_size=population_size(per_batch))
        self.context = None
        self.measured: set[int] = set()
        self.skipped = 0
        self.empty_rounds = 0

    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        mod = self.context.mod
        self.measured = {records.candidate_hash(r) for r in records.all_records(database, mod)}
        valid = records.valid_records(database, mod)
        if valid and cost_model is not None:
            results = [ms.runner.RunnerResult([float(s) for s in r.run_secs], None) for r in valid]
            cost_model.update(self.context, [r.as_measure_candidate() for r in valid], results)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        if self.budget.left <= 0:
            return None
        fresh = self._unmeasured(self.first)
        self.first = []
        if not fresh:
            candidates = self.inner.generate_measure_candidates()
            if candidates is None:
                return None
            fresh = self._unmeasured(candidates)
            self.empty_rounds = 0 if fresh else self.empty_rounds + 1
            if self.empty_rounds >= MAX_EMPTY_ROUNDS:
                return None  # the inner search only proposes what was measured: its space is exhausted
        fresh = fresh[: self.budget.left]
        self.budget.left -= len(fresh)
        return fresh

    def _unmeasured(self, candidates) -> list:
        """The candidates not measured yet, now counted as measured (never twice in this run either)."""
        fresh = []
        for candidate in candidates:
            key = records.scheduled_hash(self.context.mod, candidate.sch.trace)
            if key not in self.measured:
                self.measured.add(key)
                fresh.append(candidate)
        self.skipped += len(candidates) - len(fresh)
        return fresh

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return ResumingSearch(self.budget, self.first, self.inner.clone())
