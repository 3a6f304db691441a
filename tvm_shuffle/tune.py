"""``python -m tvm_shuffle.tune``: auto-tune a model for a target, then build its bundle.

MetaSchedule searches schedules for each fused kernel, guided by an XGBoost
cost model, measuring candidates on this machine or on a board or GPU behind
TVM's RPC tracker. Every measurement is kept in a database under --work-dir
(re-running the same command resumes; Ctrl-C keeps what was measured), and
the result is the same bundle as ``compile``, with tuned kernels.

From Python, ``tvm_shuffle.tune(model, target="x86", trials=..., ...)`` does
the same and returns a :class:`tvm_shuffle.api.Compiled` (this module is
callable as :func:`tvm_shuffle.api.tune`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tvm_shuffle import api, cli, targets
from tvm_shuffle.errors import cli_entry

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
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m tvm_shuffle.tune", description=paragraphs[0] + "\n\n" + paragraphs[1],
        epilog=EPILOG.format(x86=targets.get("x86").default_trials, arm=targets.get("arm").default_trials,
                             cuda=targets.TARGETS["cuda"].default_trials),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_arguments(parser)
    cli.add_target_arguments(parser)
    parser.add_argument("--trials", type=int, metavar="N", help="candidates to measure in all (default: per target)")
    cli.add_work_dir_argument(parser)
    parser.add_argument("--out", metavar="DIR", help="output directory for the bundle "
                        "(default: out/<model>-<target>)")
    cli.add_rpc_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    parser.add_argument("--no-wait", action="store_true", help="stop at once (exit 2) when another tune is "
                        "writing this model's records, instead of waiting for it")
    return parser


def print_summary(compiled: api.Compiled, out: Path, before_ms: float | None, after_ms: float | None) -> None:
    tuning = compiled.tuning
    outcome, device, spec = tuning.outcome, tuning.device, compiled.spec
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
    print(f"tuned library: {out / compiled.manifest['library']} (records: {outcome.directory})")


def print_check(compiled: api.Compiled) -> None:
    from tvm_shuffle.tuning import in_model

    verdicts, outcome = compiled.tuning.kept_default, compiled.tuning.outcome
    if verdicts is None:
        print("in-model check: skipped (the library does not run on this machine's CPU); "
              "every kernel uses MetaSchedule's pick")
        return
    print(f"in-model check: {len(verdicts)} of {len(outcome.workloads)} kernels ran faster in the model with "
          f"their default schedule and keep it (choice in {outcome.directory / in_model.CHOICE})")
    for verdict in verdicts:
        print(f"  {verdict.kernel[:46]:<46} tuned {verdict.tuned_us:8.1f} us, default {verdict.default_us:8.1f} us")


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 0:
        parser.error("--trials must be >= 0")
    cli.check_rpc_arguments(parser, args)
    compiled = api.tune(cli.model_source(args), cli.target(args), trials=args.trials, work_dir=args.work_dir,
                        rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, rpc_timeout=args.rpc_timeout,
                        progress=not args.quiet, input_shape=cli.input_shape(args), shuffle=args.shuffle,
                        weights=args.weights, wait=not args.no_wait, precision=cli.precision(args),
                        **cli.quantization(args))
    out = compiled.save(args.out or f"out/{compiled.name}-{compiled.spec.name}")
    device = compiled.tuning.device
    before, after = (api.end_to_end_ms(c, device=device) for c in (compiled.tuning.untuned, compiled))
    print_summary(compiled, out, before, after)
    print_check(compiled)
    return 0


cli.make_callable(__name__, api.tune)

if __name__ == "__main__":
    raise SystemExit(main())
