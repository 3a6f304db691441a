"""What a measured batch leaves behind, unless the device went away before measuring it.

MetaSchedule's default measure callbacks record every candidate of a batch
(a failed run as 1e10 s), feed them all to the cost model and delete the
build artifacts. When a board dies during a batch, the candidates it did not
get to run fail too; recorded, they would count as measured failures: the
search would never propose them again and the cost model would learn that
they are slow. :class:`RecordMeasurements` runs the same callbacks on the
candidates that were measured, and leaves the rest unrecorded, so the next
run (once the device is back) measures them.

A failed run is the device's doing when the session request found no
device (:data:`tvm_shuffle.tuning.rpc.DEVICE_GONE` in the error), or when
the device no longer takes a session right after the batch; otherwise it is
the candidate's own failure (a crash, a wrong result) and is recorded.
"""

from __future__ import annotations

from typing import Callable, Sequence

from tvm_shuffle.errors import UserError
from tvm_shuffle.tuning import rpc
from tvm_shuffle.tvm_compat import derived_object, ms


class DeviceLost(UserError):
    """The remote device stopped answering during a batch; the run stopped with its records kept."""


def unmeasured(builder_results: Sequence, runner_results: Sequence,
               device_answers: Callable[[], bool] | None) -> list[int]:
    """Positions of the candidates a vanished device never measured (empty when it is still there).

    ``device_answers`` is asked only when a built candidate failed to run
    and no session request already found the device gone.
    """
    if device_answers is None:
        return []
    failed = [i for i, (built, ran) in enumerate(zip(builder_results, runner_results))
              if built.error_msg is None and ran.error_msg is not None]
    if not failed:
        return []
    if any(rpc.DEVICE_GONE in str(runner_results[i].error_msg) for i in failed) or not device_answers():
        return failed
    return []


@derived_object
class RecordMeasurements(ms.measure_callback.PyMeasureCallback):
    """Runs ``callbacks`` (records, cost model, progress) on the candidates of a batch that were measured.

    ``device_answers`` (for a remote device) says whether the device still
    takes a session; ``None`` (this machine) records every candidate.
    ``device_lost`` is set once a batch lost its device: the tuning loop
    stops before the next one.
    """

    def __init__(self, callbacks: Sequence, device_answers: Callable[[], bool] | None = None):
        super().__init__()
        self.callbacks = list(callbacks)
        self.device_answers = device_answers
        self.device_lost = False
        self.not_measured = 0

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        gone = set(unmeasured(builder_results, runner_results, self.device_answers))
        if gone:
            self.device_lost = True
            self.not_measured += len(gone)
        keep = [i for i in range(len(measure_candidates)) if i not in gone]
        for callback in self.callbacks:
            if isinstance(callback, ms.measure_callback.RemoveBuildArtifact):
                callback.apply(task_scheduler, task_id, measure_candidates, builder_results, runner_results)
            elif keep:
                callback.apply(task_scheduler, task_id, [measure_candidates[i] for i in keep],
                               [builder_results[i] for i in keep], [runner_results[i] for i in keep])


def device_lost_error(tracker: rpc.Tracker, not_measured: int, kept: int, directory) -> DeviceLost:
    return DeviceLost(
        f"the device {tracker.key!r} at the RPC tracker {tracker.address} stopped answering during a batch "
        f"(no device within {tracker.timeout:.0f} s); the {not_measured} candidate(s) it did not measure are not "
        f"recorded, and the {kept} records measured so far are kept in {directory}. Once the device is "
        "registered again, run the same command to resume")
