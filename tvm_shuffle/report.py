"""``python -m tvm_shuffle.report``: tvm_shuffle side by side with the engines a user would pick instead.

One run measures, with the same threads, warm-up and repetitions, in rounds
that each time every engine once: tvm_shuffle tuned (from the work
directory's tuning database) and untuned, PyTorch eager, torch.compile, ONNX
Runtime, OpenVINO and ncnn (via pnnx), and checks every engine's output
against PyTorch on several random inputs. It adds a
per-kernel profile of the tvm_shuffle library, the tuning curve, the model
zoo's MACs and parameters beside the papers' figures, and the machine.

Writes, in --out: the data (``<stem>.json``, ``<stem>_*.csv``), then
``<stem>.md`` and one self-contained ``<stem>.html`` with charts; the stem
names model, target and machine, e.g.
``report_shufflenet_v2_x1_0_x86-znver4_amd-epyc-2c``.

From Python, ``tvm_shuffle.report(model, target="x86", ...)`` measures the
same and returns a :class:`Report`; ``Report.save(directory)`` writes the
files (this module is callable as :func:`report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tvm_shuffle import api, cli, defaults, host, machine, static_check, targets
from tvm_shuffle import peers as engines_registry
from tvm_shuffle.errors import UserError, cli_entry
from tvm_shuffle.frontends import Imported, import_model

DEFAULT_WARMUP = 10
DEFAULT_REPEAT = 50
DEFAULT_ROUNDS = 5
DEFAULT_NUMERICS_INPUTS = 5
SCHEMA_VERSION = 1

EPILOG = """examples:
  python -m tvm_shuffle.report --model shufflenet_v2_x1_0 --target x86 --out reports/
  python -m tvm_shuffle.report --onnx my_model.onnx --target x86 --out reports/ --threads 1
  python -m tvm_shuffle.report --model shufflenet_v2_x0_5 --input-shape 1,3,64,64 --target x86 \\
      --peers tvm_shuffle-untuned,pytorch,onnxruntime --repeat 20 --out /tmp/quick
  python -m tvm_shuffle.report --model shufflenet_v2_x1_0 --target arm --out reports/ \\
      --rpc-tracker 192.168.1.10:9190 --rpc-key rpi4

The tuned row is built from WORK_DIR's records of `python -m tvm_shuffle.tune` for the same
--model/--input-shape/--target/--shuffle; without them the row says which command makes them.
A peer that is not installed, or cannot run the model, says so in its row; the rest completes."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tvm_shuffle.report", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_arguments(parser)
    cli.add_target_arguments(parser)
    cli.add_work_dir_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the report files")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for every engine (default: the physical cores, here "
                             f"{machine.describe()['physical_cores']}; on a remote device: its TVM default)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N",
                        help=f"untimed runs per engine before timing (default: {DEFAULT_WARMUP})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                        help=f"timed runs per engine (default: {DEFAULT_REPEAT})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, metavar="N",
                        help="the timed runs are cut into N rounds, each of which times every engine once, so "
                             f"all engines see the same machine load (default: {DEFAULT_ROUNDS})")
    parser.add_argument("--numerics-inputs", type=int, default=DEFAULT_NUMERICS_INPUTS, metavar="N",
                        help=f"random inputs compared against PyTorch (default: {DEFAULT_NUMERICS_INPUTS})")
    parser.add_argument("--peers", metavar="A,B,...",
                        help=f"engines to measure (default: all): {', '.join(engines_registry.ENGINES)}")
    parser.add_argument("--no-zoo-table", action="store_true", help="leave out the model zoo table (saves ~5 s)")
    cli.add_rpc_arguments(parser, title="remote device (boards, GPUs): the tvm_shuffle rows run there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------------------
# Measuring


def random_inputs(shape: Sequence[int], dtype: str, count: int) -> list[np.ndarray]:
    """``count`` seeded standard-normal inputs; the first one is also the timing input.

    64-byte aligned, as TVM's kernels require: otherwise the tvm_shuffle rows
    would pay for a copy that no other engine makes.
    """
    from tvm_shuffle.runtime import random_input

    return [random_input(shape, dtype, seed) for seed in range(count)]


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()),
            "mean_ms": float(ms.mean()), "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0}


def numerics(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray] | None) -> dict[str, Any]:
    """Max abs error, relative logit error (``|out - ref| / |ref|``, the worst input) and top-1 agreement
    (over inputs x batch rows) against the reference outputs."""
    if not reference:
        return {"max_abs_err": None, "top1_agreement": None, "numerics_note": "no reference engine ran"}
    errors, relative, agree, rows = [], [], 0, 0
    for out, ref in zip(outputs, reference):
        out = np.asarray(out, dtype=np.float64)
        if out.size != ref.size:
            return {"max_abs_err": None, "top1_agreement": None,
                    "numerics_note": f"output shape {out.shape} does not match the reference's {ref.shape}"}
        out = out.reshape(ref.shape)
        errors.append(float(np.abs(out - ref).max()))
        relative.append(float(np.linalg.norm(out - ref) / max(float(np.linalg.norm(ref)), 1e-30)))
        flat_out, flat_ref = out.reshape(ref.shape[0], -1), ref.reshape(ref.shape[0], -1)
        agree += int((flat_out.argmax(1) == flat_ref.argmax(1)).sum())
        rows += ref.shape[0]
    return {"max_abs_err": max(errors), "rel_logit_err": max(relative), "top1_agreement": agree / rows,
            "numerics_note": ""}


def _row(engine: engines_registry.Engine, status: str, reason: str = "", **extra) -> dict[str, Any]:
    return {"name": engine.name, "label": engine.label, "version": engine.version(), "status": status,
            "reason": reason, "note": engine.note, **{k: None for k in _STAT_KEYS}, "max_abs_err": None, "rel_logit_err": None,
            "top1_agreement": None, "numerics_note": "", "details": {}, "weight_bytes": None, **extra}


_STAT_KEYS = ("median_ms", "p90_ms", "min_ms", "mean_ms", "std_ms")


def open_engine(engine: engines_registry.Engine, workload: engines_registry.Workload, inputs: Sequence[np.ndarray],
                reference: Sequence[np.ndarray] | None) -> tuple[dict[str, Any], engines_registry.Session | None]:
    """One engine's row with its numerics, and its session, still open, when it ran every input.

    The session is None when the engine could not run (the row says why);
    never raises for the engine's own failures.
    """
    missing = engine.missing()
    if missing:
        return _row(engine, "not installed", f"not installed (pip install {engine.install})"), None
    if workload.tracker is not None and not engine.remote:
        return _row(engine, "not run", f"runs on this host only, not on the {_device_words(workload)}"), None
    try:
        session = engine.prepare(workload)
    except (engines_registry.Unavailable, UserError) as err:  # UserError: e.g. a corrupt tuning database, named in the cell
        return _row(engine, "unavailable", str(err)), None
    except Exception as err:  # an engine's own bug or limitation: its cell says so, the report goes on
        return _row(engine, "failed", f"{type(err).__name__}: {engines_registry.first_line(err)}"), None
    try:
        outputs = [session.run(x) for x in inputs]
    except Exception as err:
        session.close()
        return _row(engine, "failed", f"{type(err).__name__} while running: {engines_registry.first_line(err)}",
                    details=session.details), None
    return _row(engine, "ok", **numerics(outputs, reference), details=session.details,
                compiled=session.compiled, weight_bytes=session.weight_bytes), session


def round_sizes(repeat: int, rounds: int) -> list[int]:
    """``repeat`` timed runs cut into at most ``rounds`` rounds as even as can be."""
    rounds = max(1, min(rounds, repeat))
    return [repeat // rounds + (i < repeat % rounds) for i in range(rounds)]


def time_interleaved(rows: Sequence[dict], sessions: Sequence[engines_registry.Session | None], x: np.ndarray, *,
                     warmup: int, repeat: int, rounds: int, on_round=lambda: None) -> None:
    """Time every open session in rounds, each of which runs every engine once, and fill in their rows.

    On a shared machine the load moves by the minute: engines timed one
    after another would each see a different machine, and their ratios
    would mean little. Every engine gets ``warmup`` untimed runs in every
    round (another engine has just had the caches and the cores). A row
    gets the statistics over all its runs, and each round's median
    (``rounds_ms``); an engine that fails while timing is marked failed,
    the others go on.
    """
    samples: list[list[float]] = [[] for _ in rows]
    per_round: list[list[float]] = [[] for _ in rows]
    live = [i for i, session in enumerate(sessions) if session is not None]
    for size in round_sizes(repeat, rounds):
        for i in list(live):
            try:
                seconds = sessions[i].times(x, warmup=warmup, repeat=size)
            except Exception as err:
                rows[i].update(status="failed", reason=f"{type(err).__name__} while timing: {engines_registry.first_line(err)}")
                live.remove(i)
                continue
            samples[i] += seconds
            per_round[i].append(round(float(np.median(seconds)) * 1e3, 4))
        on_round()
    for i in live:
        rows[i].update(**latency_stats(samples[i]), samples_ms=[round(s * 1e3, 4) for s in samples[i]],
                       rounds_ms=per_round[i])


@dataclasses.dataclass(frozen=True)
class Timing:
    """How every engine is timed: ``repeat`` runs cut into ``rounds``, ``warmup`` untimed runs before each round."""

    warmup: int = DEFAULT_WARMUP
    repeat: int = DEFAULT_REPEAT
    rounds: int = DEFAULT_ROUNDS

    def check(self) -> None:
        for name, least in (("warmup", 0), ("repeat", 1), ("rounds", 1)):
            if getattr(self, name) < least:
                raise UserError(f"{name} must be at least {least}, not {getattr(self, name)}")


def measure_engines(engines: Sequence[engines_registry.Engine], workload: engines_registry.Workload, inputs: Sequence[np.ndarray],
                    reference: Sequence[np.ndarray] | None, timing: Timing, *,
                    quiet: bool = False) -> list[dict[str, Any]]:
    """Every engine's row: each is opened and checked in turn, then all are timed in interleaved rounds."""
    rows, sessions = [], []
    try:
        with _progress(len(engines) + len(round_sizes(timing.repeat, timing.rounds)), quiet) as bar:
            for engine in engines:
                bar.set_postfix_str(engine.label)  # torch.compile, say, compiles for a minute here
                row, session = open_engine(engine, workload, inputs, reference)
                rows.append(row)
                sessions.append(session)
                bar.update()
            bar.set_postfix_str("timing")
            time_interleaved(rows, sessions, inputs[0], warmup=timing.warmup, repeat=timing.repeat,
                             rounds=timing.rounds, on_round=bar.update)
    finally:
        for session in sessions:
            if session is not None:
                session.close()
    return rows


def reference_outputs(workload: engines_registry.Workload, inputs: Sequence[np.ndarray]) -> tuple[str | None, list | None]:
    """Outputs of PyTorch eager (ONNX Runtime for ONNX input) on ``inputs``, run on this host."""
    for name in (engines_registry.REFERENCE, engines_registry.FALLBACK_REFERENCE):
        engine = engines_registry.ENGINES[name]
        if engine.missing():
            continue
        try:
            session = engine.prepare(workload)
        except engines_registry.Unavailable:
            continue
        try:
            return name, [np.asarray(session.run(x), dtype=np.float64) for x in inputs]
        finally:
            session.close()
    return None, None


def speedups(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """``result[a][b]``: how many times faster engine a is than engine b (ratio of medians)."""
    ok = [r for r in rows if r["status"] == "ok"]
    return {a["name"]: {b["name"]: b["median_ms"] / a["median_ms"] for b in ok if b is not a} for a in ok}


def speedup_ranges(rows: Sequence[dict]) -> dict[str, dict[str, list[float]]]:
    """``result[a][b]``: the lowest and highest of those ratios over the timing rounds (how far the load moved them)."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("rounds_ms")]

    def low_high(a: dict, b: dict) -> list[float]:
        ratios = [tb / ta for ta, tb in zip(a["rounds_ms"], b["rounds_ms"])]
        return [min(ratios), max(ratios)]

    return {a["name"]: {b["name"]: low_high(a, b) for b in ok if b is not a} for a in ok}


def _device_words(workload: engines_registry.Workload) -> str:
    emulated = "emulated " if workload.emulated else ""
    return f"{emulated}device {workload.tracker.key!r} (via {workload.tracker.address})"


# ---------------------------------------------------------------------------
# Profile, tuning curve, model table


def kernel_profile(workload: engines_registry.Workload, rows: Sequence[dict], x: np.ndarray, peaks: dict,
                   log=lambda message: None) -> dict[str, Any]:
    """Per-kernel profile of the tuned library (the untuned one without tuning records)."""
    from tvm_shuffle import profile

    built = [r for r in rows if r["name"].startswith("tvm_shuffle") and r["status"] == "ok"]
    if workload.tracker is not None:
        return {"note": f"per-kernel profiles are taken on this host only; the library ran on the "
                        f"{_device_words(workload)}", "rows": []}
    if workload.spec.family == "cuda" or not built:
        return {"note": "no tvm_shuffle library ran on this host's CPU, so there is nothing to profile", "rows": []}
    chosen = built[0]
    log(f"profiling the {chosen['label']} library per kernel")
    kernel_rows = chosen["compiled"].profile(x)
    total_us = sum(r.us for r in kernel_rows)
    table = []
    for r in kernel_rows:
        table.append({"kernel": r.name, "category": r.category, "calls": r.calls, "us": r.us, "share": r.share,
                      "flops": r.flops, "bytes": r.bytes, "gflops": r.gflops, "gbps": r.gbps,
                      "pct_peak_flops": 100 * r.gflops / peaks["gflops"] if r.gflops and peaks.get("gflops") else None,
                      "pct_peak_bw": 100 * r.gbps / peaks["gbps"] if r.gbps and peaks.get("gbps") else None})
    return {"engine": chosen["name"], "rows": table, "shares": profile.category_shares(kernel_rows),
            "total_us": total_us, "end_to_end_ms": chosen["median_ms"],
            "model_flops": sum(r.flops for r in kernel_rows),
            "note": (f"{chosen['label']} library, {profile.DEFAULT_RUNS} runs, median per call, timed from the "
                     "Relax VM's instrument hook less the hook's own cost")}


def tuning_curve(workload: engines_registry.Workload) -> dict[str, Any]:
    """MetaSchedule's end-to-end estimate (sum over kernels of calls x best so far) after each record."""
    from tvm_shuffle import build, passes
    from tvm_shuffle.tuning import database, tasks

    directory = api.records_dir(workload.imported, workload.spec, workload.work_dir, workload.shuffle)
    records = database.read_records(directory) if (directory / database.RECORDS).is_file() else []
    if not records:
        return {"points": [], "database": str(directory),
                "note": f"no tuning database in {directory}; create one with: {workload.tune_command}"}
    import tvm_ffi

    lowered = build.lower(passes.optimize(workload.imported.mod, shuffle=workload.shuffle), workload.spec)
    task_list = tasks.extract(lowered, tasks.tuning_target(workload.spec, host_cores=host.physical_cores()))
    weight_by_hash = {str(tvm_ffi.structural_hash(t.mod)): t.weight for t in task_list}
    best: dict[str, float] = {}
    points = []
    for trial, record in enumerate(records, start=1):
        if record.workload in weight_by_hash and record.ran:
            best[record.workload] = min(record.seconds, best.get(record.workload, float("inf")))
        if len(best) == len(weight_by_hash):
            points.append([trial, 1e3 * sum(weight_by_hash[h] * s for h, s in best.items())])
    note = "" if points else (f"MetaSchedule has records for {len(best)} of {len(weight_by_hash)} kernels after "
                              f"{len(records)} trials; the estimate needs all of them")
    return {"points": points, "database": str(directory), "trials": len(records), "tasks": len(weight_by_hash),
            "tasks_measured": len(best), "note": note}


def model_table() -> list[dict]:
    from tvm_shuffle import models

    return models.zoo_table()


# ---------------------------------------------------------------------------
# The report


def file_stem(model: str, input_shape: Sequence[int], target_dir: str, machine_tag: str, *,
              shuffle: str = "fused", threads: str = "") -> str:
    """``report_<model>[_<shape>]_<target>[_stock]_<machine>[_<threads>]``: every file names its full setup.

    The parts in brackets appear only when they differ from the defaults
    (1x3x224x224, fused shuffles, one thread per physical core).
    """
    shape = "" if tuple(input_shape) == defaults.INPUT_SHAPE else "_" + "x".join(map(str, input_shape))
    mode = "" if shuffle == "fused" else f"_{shuffle}"
    suffix = f"_{threads}" if threads else ""
    return f"report_{_safe(model)}{shape}_{_safe(target_dir)}{mode}_{_safe(machine_tag)}{suffix}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def tune_command(model, spec: targets.TargetSpec, *, input_shape: Sequence[int] | None, work_dir,
                 shuffle: str, rpc_tracker: str | None, rpc_key: str | None) -> str:
    """The ``python -m tvm_shuffle.tune`` command that makes the records the tuned row is built from."""
    parts = ["python -m tvm_shuffle.tune", f"--target {spec.name}", api.model_flags(model, input_shape),
             f"--work-dir {work_dir}"]
    if shuffle != "fused":
        parts.append(f"--shuffle {shuffle}")
    if rpc_tracker:
        parts.append(f"--rpc-tracker {rpc_tracker} --rpc-key {rpc_key}")
    return " ".join(parts)


@dataclasses.dataclass
class Report:
    """A report's data (what ``<stem>.json`` holds); :meth:`save` writes the JSON, CSV, Markdown and HTML files."""

    data: dict[str, Any]

    @property
    def engines(self) -> list[dict[str, Any]]:
        return self.data["engines"]

    def save(self, directory: str | os.PathLike) -> list[Path]:
        from tvm_shuffle import report_render

        return report_render.write_all(self.data, Path(directory))

    def __repr__(self) -> str:
        ok = [f"{r['label']} {r['median_ms']:.3f} ms" for r in self.engines if r["status"] == "ok"]
        return f"<Report {self.data['stem']}: {', '.join(ok) or 'no engine ran'}>"


def report(model, target: str | targets.TargetSpec = "x86", *, peers: Sequence[str] | None = None,
           threads: int | None = None, work_dir: str | os.PathLike = defaults.WORK_DIR, warmup: int = DEFAULT_WARMUP,
           repeat: int = DEFAULT_REPEAT, rounds: int = DEFAULT_ROUNDS, numerics_inputs: int = DEFAULT_NUMERICS_INPUTS, rpc_tracker: str | None = None,
           rpc_key: str | None = None, rpc_timeout: float | None = None, zoo_table: bool = True,
           quiet: bool = False, input_shape: Sequence[int] | None = None, example_inputs=None,
           shuffle: str = "fused", weights: str | None = None, command: str | None = None, log=None,
           precision: str = "fp32", calibration=None, calibrator: str = "minmax") -> Report:
    """Measure ``model`` on every engine in ``peers_`` (default: all of :data:`tvm_shuffle.engines_registry.ENGINES`).

    Model sources are those of :func:`tvm_shuffle.compile`. ``threads`` go to
    every engine (default: this machine's physical cores); the tuned row is
    built from ``work_dir``'s records. Each engine runs ``repeat`` timed
    calls cut into ``rounds``, each round after ``warmup`` untimed calls.
    ``command`` is what the report says made it (default: this call).
    ``precision`` is that of the tvm_shuffle tuned and untuned rows (the
    ``tvm_shuffle-bf16`` row is always bf16). The int8 rows (``tvm_shuffle-int8``,
    ``onnxruntime-int8``, ``openvino-int8``) calibrate on ``calibration`` (an
    array, a ``.npy`` file or an image directory; None: the synthetic set of
    :mod:`tvm_shuffle.quantize`) with ``calibrator``.
    """
    from tvm_shuffle.tuning import runner

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if threads is not None and threads < 1 or numerics_inputs < 1:
        raise UserError("threads and numerics_inputs must be at least 1")
    timing = Timing(warmup, repeat, rounds)
    timing.check()
    engines = engines_registry.select(peers)  # an unknown engine fails before the slow part
    spec = api.resolve_target(target)
    api._check_precision(precision, spec)
    if rpc_key and not rpc_tracker:
        raise UserError("rpc_key needs rpc_tracker (HOST:PORT)")
    tracker, emulated = _remote(spec, rpc_tracker, rpc_key, rpc_timeout)
    host_info = machine.describe(threads)
    threads_used = host_info["threads"]
    with host.tvm_threads(threads_used), tempfile.TemporaryDirectory(prefix="tvm_shuffle_report_") as scratch:
        imported = import_model(model, input_shape=input_shape, example_inputs=example_inputs, weights=weights)
        workload = engines_registry.Workload(
            name=imported.name, imported=imported, spec=spec, threads=threads_used, scratch=Path(scratch),
            work_dir=Path(work_dir), shuffle=shuffle, precision=precision, torch_module=_torch_module(model, weights),
            onnx_file=_onnx_file(model, Path(scratch)), tracker=tracker, emulated=emulated,
            device_threads=threads if tracker else None, calibration=calibration, calibrator=calibrator,
            tune_command=tune_command(model, spec, input_shape=input_shape, work_dir=work_dir, shuffle=shuffle,
                                      rpc_tracker=rpc_tracker, rpc_key=rpc_key))
        inputs = random_inputs(imported.input_shape, imported.input_dtype, numerics_inputs)
        round_count = len(round_sizes(timing.repeat, timing.rounds))
        static = None
        if tracker is None and not runner.runs_here(spec):  # a board's code, checked without the board
            reference_name, peaks = None, {}
            rows = [_row(engine, "not run", _no_device_reason(spec)) for engine in engines]
            static = static_check.analyze(imported, spec, workload.scratch / "static", shuffle=shuffle, log=log,
                                          precision=precision, calibration=_static_calibration(workload))
            kernels = {"note": f"no {spec.runtime_arch} device attached, so nothing was timed: the static code "
                               "check below reads the generated machine code instead", "rows": []}
        else:
            log(f"measuring {len(engines)} engines on {imported.name} {'x'.join(map(str, imported.input_shape))}, "
                f"{threads_used} threads, {timing.repeat} timed runs each in {round_count} rounds, "
                f"{timing.warmup} warm-up runs before each")
            reference_name, reference = reference_outputs(workload, inputs)
            rows = measure_engines(engines, workload, inputs, reference, timing, quiet=quiet)
            for row in rows:
                log(f"  {row['label']}: " + (f"{row['median_ms']:.3f} ms (rounds: "
                                              f"{', '.join(f'{t:.3f}' for t in row['rounds_ms'])})"
                                              if row["status"] == "ok" else row["reason"]))
            peaks = machine.measure_peaks(threads_used)
            kernels = kernel_profile(workload, rows, inputs[0], peaks, log)
        curve = tuning_curve(workload)
    for row in rows:
        row.pop("compiled", None)
    tuned = next((r for r in rows if r["name"] == "tvm_shuffle-tuned"), None)
    untuned = next((r for r in rows if r["name"] == "tvm_shuffle-untuned"), None)
    curve["tuned_ms"] = tuned["median_ms"] if tuned else None
    curve["untuned_ms"] = untuned["median_ms"] if untuned else None
    from tvm_shuffle.tuning import database

    target_dir = database.target_dir_name(spec)
    device = ({"kind": "remote", "key": tracker.key, "tracker": tracker.address, "emulated": emulated,
               "arch": spec.runtime_arch} if tracker else {"kind": "local", "arch": host_info["arch"],
                                                           "emulated": False})
    tag = f"rpc-{tracker.key}{'-emulated' if emulated else ''}" if tracker else machine.tag(host_info)
    zoo = model_table() if zoo_table else []
    return Report({
        "schema": SCHEMA_VERSION,
        "stem": file_stem(imported.name, imported.input_shape, target_dir, tag, shuffle=shuffle,
                          threads="" if threads in (None, host_info["physical_cores"]) else f"{threads}t"),
        "command": command or f"tvm_shuffle.report({imported.name!r}, {spec.name!r})",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": imported.name, "source": imported.source, "input_shape": list(imported.input_shape),
                  "input_dtype": imported.input_dtype, "tvm_flops": kernels.get("model_flops"),
                  **_zoo_figures(imported.name, zoo)},
        "target": {"name": spec.name, "family": spec.family, "tvm": spec.target, "dir": target_dir},
        "machine": {**host_info, "peaks": peaks},
        "device": device,
        "setup": {"threads": threads_used, "device_threads": workload.device_threads if tracker else threads_used,
                  "warmup": timing.warmup, "repeat": timing.repeat, "rounds": round_count,
                  "numerics_inputs": len(inputs), "shuffle": shuffle, "precision": precision,
                  "reference": reference_name,
                  "work_dir": str(work_dir)},
        "engines": rows,
        "speedups": speedups(rows),
        "speedup_ranges": speedup_ranges(rows),
        "profile": kernels,
        "static_check": static,
        "tuning": curve,
        "models": zoo,
    })


def _zoo_figures(name: str, zoo: Sequence[dict]) -> dict:
    row = next((r for r in zoo if r["name"] == name), None)
    keys = ("macs", "params", "paper_macs", "paper_params")
    return {k: row[k] for k in keys} if row else {k: None for k in keys}


def _peer_names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def _torch_module(model, weights: str | None):
    """The PyTorch module behind the model: the zoo's, the user's, the program's, or None for ONNX."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return model
    if torch is not None and isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if isinstance(model, Imported) or not isinstance(model, (str, os.PathLike)):
        return None
    if str(model).endswith(".pt2"):
        import torch

        return torch.export.load(str(model)).module()
    from tvm_shuffle import models

    return models.build_model(str(model), weights=weights) if str(model) in models.MODELS else None


def _onnx_file(model, scratch: Path) -> Path | None:
    """The user's ONNX model as a file the ONNX engines read (a ``ModelProto`` is written to ``scratch``)."""
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        path = scratch / "model.onnx"
        onnx.save(model, str(path))
        return path
    if isinstance(model, (str, os.PathLike)) and Path(model).is_file() and not str(model).endswith(".pt2"):
        return Path(model)
    return None


def _static_calibration(workload):
    """The static check's int8 calibration: the report's calibration set (that of its int8 rows); None otherwise."""
    from tvm_shuffle import precisions, quantize

    if not precisions.get(workload.precision).calibrated:
        return None
    data = engines_registry._calibration_data(workload)
    return quantize.load_calibration(data, workload.imported.input_shape, calibrator=workload.calibrator)


def _remote(spec: targets.TargetSpec, rpc_tracker: str | None, rpc_key: str | None, rpc_timeout: float | None):
    """(tracker, emulated) for an RPC tracker; an error when the target cannot run here and none is given."""
    from tvm_shuffle.tuning import rpc, runner

    if rpc_tracker:
        timeout = rpc.DEFAULT_TIMEOUT_S if rpc_timeout is None else rpc_timeout
        tracker = rpc.parse_tracker(rpc_tracker, rpc_key, timeout)
        found = rpc.probe(tracker, "cuda" if spec.family == "cuda" else "cpu")
        return tracker, found.emulated
    if not runner.runs_here(spec) and spec.family == "cuda":
        raise UserError(f"target {spec.name} runs on {spec.description}, not on this {host.arch()} "
                        f"machine; attach one with --rpc-tracker HOST:PORT --rpc-key KEY "
                        f"(python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY on the device)")
    return None, False


def _no_device_reason(spec: targets.TargetSpec) -> str:
    return (f"no {spec.runtime_arch} device attached (--rpc-tracker HOST:PORT --rpc-key KEY runs the tvm_shuffle "
            "rows on a board); the static code check stands in for the per-kernel profile")


def _progress(total: int, quiet: bool):
    """A progress bar over the engines (disabled, but still usable, with --quiet)."""
    from tqdm import tqdm

    return tqdm(total=total, desc="engines", unit="engine", file=sys.stderr, leave=False, disable=quiet)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("repeat", "warmup", "rounds", "numerics_inputs", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be at least {0 if name == 'warmup' else 1}")
    cli.check_rpc_arguments(parser, args)
    engines_registry.select(_peer_names(args.peers))  # an unknown engine fails before the slow part


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    result = report(cli.model_source(args), cli.target(args), peers=_peer_names(args.peers), threads=args.threads,
                    work_dir=args.work_dir, warmup=args.warmup, repeat=args.repeat, rounds=args.rounds,
                    numerics_inputs=args.numerics_inputs, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                    rpc_timeout=args.rpc_timeout, zoo_table=not args.no_zoo_table, quiet=args.quiet,
                    input_shape=cli.input_shape(args), shuffle=args.shuffle, weights=args.weights,
                    precision=cli.precision(args), calibration=args.calibration, calibrator=args.calibrator,
                    command=shlex.join(["python", "-m", "tvm_shuffle.report", *argv]))
    for path in result.save(args.out):
        print(path)
    return 0


cli.make_callable(__name__, report)

if __name__ == "__main__":
    raise SystemExit(main())
