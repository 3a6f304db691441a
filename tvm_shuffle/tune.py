"""``python -m tvm_shuffle.tune``: auto-tune a model for a target, then build it.

MetaSchedule searches schedules for each fused kernel, guided by an XGBoost
cost model, measuring candidates on this machine or on a board or GPU behind
TVM's RPC tracker. Every measurement is kept in a database under --work-dir
(re-running the same command resumes; Ctrl-C keeps what was measured), and
the result is the same library + manifest as ``compile``, with tuned kernels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from tvm_shuffle import targets
from tvm_shuffle.compile import add_model_arguments, add_target_arguments, import_model, resolve_target
from tvm_shuffle.errors import cli_entry
from tvm_shuffle.tuning import database, in_model, rpc, runner

DEFAULT_RPC_TIMEOUT_S = 60

EPILOG = """budget: --trials is the number of candidates to measure for this model and target,
counting earlier runs; the default depends on the target (x86: {x86} trials, a few minutes
for ShuffleNetV2 here; ARM boards: {arm}; CUDA GPUs: {cuda}). Quality keeps improving up to
about 1000-2000 trials for a ShuffleNet.

examples:
  python -m tvm_shuffle.tune --model shufflenet_v2_x1_0 --target x86
  python -m tvm_shuffle.tune --model shufflenet_v2_x1_0 --target x86 --trials 1000 --out out/v2-tuned
  python -m tvm_shuffle.tune --onnx my_model.onnx --target arm --rpc-tracker 192.168.1.10:9190 --rpc-key rpi4

Attach a board (or a GPU machine) through TVM's RPC tracker:
  python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190                  # on this machine
  python -m tvm.exec.rpc_server --tracker THIS_HOST:9190 --key rpi4          # on the board

Records live in WORK_DIR/<target>/<model>/ (MetaSchedule's JSON database, logs/ has the
details); records of identical kernels are shared between models of the same target."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tvm_shuffle.tune", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        epilog=EPILOG.format(x86=targets.get("x86").default_trials, arm=targets.get("arm").default_trials,
                             cuda=targets.TARGETS["cuda"].default_trials),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_target_arguments(parser)
    parser.add_argument("--trials", type=int, metavar="N", help="candidates to measure in all (default: per target)")
    parser.add_argument("--work-dir", default="work", metavar="DIR",
                        help="where tuning records and logs are kept (default: ./work)")
    parser.add_argument("--out", metavar="DIR", help="output directory for model.so + manifest.json "
                        "(default: out/<model>-<target>)")
    remote = parser.add_argument_group("remote device (boards, GPUs)")
    remote.add_argument("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker the device is registered with")
    remote.add_argument("--rpc-key", metavar="KEY", help="the device's key (rpc_server --key)")
    remote.add_argument("--rpc-timeout", type=float, default=DEFAULT_RPC_TIMEOUT_S, metavar="SECONDS",
                        help=f"give up on an unreachable tracker or busy device after this long "
                             f"(default: {DEFAULT_RPC_TIMEOUT_S})")
    parser.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    return parser


def model_flags(args: argparse.Namespace) -> str:
    """The model part of the command line, for hints."""
    flags = [f"--{name} {getattr(args, name)}" for name in ("model", "onnx", "torch") if getattr(args, name)]
    if args.input_shape:
        flags.append(f"--input-shape {args.input_shape}")
    return " ".join(flags) or "--model NAME"


def choose_device(args: argparse.Namespace, spec: targets.TargetSpec) -> runner.Device:
    if args.rpc_tracker:
        return runner.remote(spec, rpc.parse_tracker(args.rpc_tracker, args.rpc_key, args.rpc_timeout))
    return runner.local(spec)


def end_to_end_ms(directory: Path, imported, spec: targets.TargetSpec, device: runner.Device) -> float | None:
    """Median latency of a built model: here with the runtime, or on the remote device over RPC."""
    x = np.random.default_rng(0).standard_normal(imported.input_shape).astype(imported.input_dtype)
    if spec.family == "cuda" and not device.remote:
        return None  # tvm_shuffle.runtime is CPU-only; a local GPU is measured by the C++ example
    if device.remote:
        _, seconds = runner.run_remote(device.tracker, directory / "model.so", x, gpu=spec.family == "cuda")
        return seconds * 1e3
    from tvm_shuffle import runtime

    return statistics.median(runtime.load(directory).benchmark(x, warmup=10, repeat=50)) * 1e3


def print_summary(outcome, spec, device, out: Path, before_ms: float | None, after_ms: float | None) -> None:
    print(f"tuned {spec.name} on {device.description}: {len(outcome.tasks)} tasks, "
          f"{outcome.measured + outcome.failed} trials this run ({outcome.failed} failed, "
          f"{outcome.skipped} repeats skipped), {outcome.done_before + outcome.measured + outcome.failed} "
          f"of {outcome.budget} in all, {outcome.seconds:.0f} s")
    if outcome.builder.batches:
        print(f"builder: {outcome.builder.candidates} candidates in {outcome.builder.batches} batches, "
              f"{outcome.builder.seconds / outcome.builder.batches:.2f} s per batch "
              f"({outcome.builder.seconds_per_candidate * 1e3:.0f} ms per candidate)"
              + (f"; {outcome.builder.abandoned} compiles ran past the builder's timeout and count as failed"
                 if outcome.builder.abandoned else ""))
    print(f"{'task':<48} {'calls':>5} {'best (us)':>10} {'trials':>6}")
    for task in outcome.tasks:
        best = f"{task.best_seconds * 1e6:10.1f}" if task.best_seconds is not None else f"{'-':>10}"
        print(f"{task.name[:48]:<48} {task.weight:>5} {best} {task.trials:>6}")
    estimate = outcome.estimate_seconds
    if estimate is not None:
        print(f"MetaSchedule end-to-end estimate (sum of calls x best): {estimate * 1e3:.3f} ms")
    if before_ms is not None and after_ms is not None:
        where = f" on {device.description}" if device.remote else ""
        print(f"end-to-end median latency{where}: untuned {before_ms:.3f} ms -> tuned {after_ms:.3f} ms "
              f"({before_ms / after_ms:.2f}x)")
    if device.emulated:
        print("note: these timings come from an emulator (qemu); they say nothing about the real board")
    print(f"tuned library: {out / 'model.so'} (records: {outcome.directory})")


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 0:
        parser.error("--trials must be >= 0")
    spec = resolve_target(args)
    targets.require_cross_compiler(spec)
    if not args.rpc_tracker and not runner.runs_here(spec):
        raise runner.no_device_error(spec, model_flags(args))
    database.prepare_dir(Path(args.work_dir))
    device = choose_device(args, spec)
    imported = import_model(args)
    print(f"imported {imported.name} ({imported.source}) input {imported.input_name} "
          f"{'x'.join(map(str, imported.input_shape))}", file=sys.stderr)

    from tvm_shuffle.tuning import session

    outcome = session.tune(imported, spec, device=device, work_dir=args.work_dir, trials=args.trials,
                           shuffle=args.shuffle, quiet=args.quiet)
    if outcome.interrupted:
        print(f"interrupted: every measured record is kept in {outcome.directory}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    out = Path(args.out or f"out/{imported.name}-{spec.name}")
    print("building the tuned library, then checking its kernels in the model", file=sys.stderr)
    out, untuned, verdicts = in_model.build_checked(imported, spec, outcome, out, shuffle=args.shuffle,
                                                    device=device)
    before, after = (end_to_end_ms(d, imported, spec, device) for d in (untuned, out))
    print_summary(outcome, spec, device, out, before, after)
    print_check(verdicts, outcome)
    return 0


def print_check(verdicts, outcome) -> None:
    if verdicts is None:
        print("in-model check: skipped (the library does not run on this machine's CPU); "
              "every kernel uses MetaSchedule's pick")
        return
    print(f"in-model check: {len(verdicts)} of {len(outcome.workloads)} kernels ran faster in the model with "
          f"their default schedule and keep it (choice in {outcome.directory / in_model.CHOICE})")
    for verdict in verdicts:
        print(f"  {verdict.kernel[:46]:<46} tuned {verdict.tuned_us:8.1f} us, default {verdict.default_us:8.1f} us")


if __name__ == "__main__":
    raise SystemExit(main())
