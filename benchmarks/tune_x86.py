"""Tuned ShuffleNetV2 on this x86 machine against ONNX Runtime, and latency versus trials.

    python benchmarks/tune_x86.py [--model shufflenet_v2_x1_0] [--checkpoints 64,200,400,800]
                                  [--threads 2] [--repeat 50] [--rounds 3] [--work-dir work/bench]
                                  [--precision fp32|bf16|int8]

Tunes in steps (each resumes the previous one's records) and after every
step times the tuned library (after the in-model check of
``tvm_shuffle.tuning.in_model``, as ``tune`` builds it), MetaSchedule's own
pick (every kernel from the records), the untuned library and ONNX Runtime
(same thread count, fp32, batch 1) in interleaved rounds, so the numbers of
a row saw the same machine load: on a shared machine the ratios are what to
read, and each round's ratio (its range shows how far the machine's load
moved them). ``--precision bf16`` or ``int8`` tunes and times the builds of
that precision (int8 calibrated on the synthetic set); ONNX Runtime stays fp32. Prints a Markdown table and writes it, with the raw numbers as JSON,
to ``benchmarks/results/`` under a name that records the setup.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import warnings
from pathlib import Path

from tvm_shuffle import host
from tvm_shuffle.defaults import SHUFFLE_MODES

RESULTS = Path(__file__).parent / "results"


def parse_checkpoints(text: str) -> list[int]:
    steps = sorted({int(t) for t in text.split(",")})
    if not steps or steps[0] <= 0:
        raise SystemExit("--checkpoints must be positive trial counts, e.g. 64,200,400")
    return steps


def interleaved_ms(runs: dict, x, *, rounds: int, repeat: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median milliseconds per engine over ``rounds`` rounds that each time every engine once, and per round."""
    from tvm_shuffle import timing

    samples = {name: [] for name in runs}
    per_round = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times = timing.measure(lambda: run(x), warmup=5, repeat=repeat)
            samples[name] += times
            per_round[name].append(statistics.median(times) * 1e3)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}, per_round


def round_ratios(per_round: dict[str, list[float]], engine: str, baseline: str) -> list[float]:
    """``engine`` against ``baseline`` in each round: a round's engines saw the same machine load."""
    return [round(a / b, 3) for a, b in zip(per_round[engine], per_round[baseline])]


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shufflenet_v2_x1_0")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--checkpoints", default="64,200,400,800", help="cumulative trial counts to time at")
    parser.add_argument("--threads", type=int, default=host.physical_cores())
    parser.add_argument("--repeat", type=int, default=50, help="calls per engine per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shuffle", choices=SHUFFLE_MODES, default=SHUFFLE_MODES[0])
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="the precision tuned and timed (int8: calibrated on the synthetic set)")
    parser.add_argument("--work-dir", default="work/bench", help="tuning records (resumed if present)")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    from tvm_shuffle.checkout import require_checkout, revision as checkout_revision

    root = Path(__file__).resolve().parents[1]
    require_checkout(root)
    revision = checkout_revision(root)
    host.export_thread_settings(args.threads)  # before any TVM runtime is loaded

    import numpy as np
    import torch

    import tvm_shuffle as ts
    from tvm_shuffle import frontends, models, peers, targets
    from tvm_shuffle.tuning import database
    from tvm_shuffle.tvm_compat import TVM_VERSION

    spec = targets.get("x86")
    imported = frontends.import_model(args.model, input_shape=args.input_shape)
    x = np.random.default_rng(0).standard_normal(imported.input_shape).astype("float32")
    scratch = Path(args.work_dir) / "bench-out"
    scratch.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    workload = peers.Workload(name=args.model, imported=imported, spec=spec, threads=args.threads, scratch=scratch,
                              work_dir=Path(args.work_dir), torch_module=models.build_model(args.model).eval())
    (ort,) = peers.select(["onnxruntime"])
    ort_run = ort.prepare(workload).run
    warnings.filterwarnings("ignore", message="no calibration data")  # int8: the synthetic set, said in the header
    untuned = ts.compile(imported, spec, shuffle=args.shuffle, quiet=True, precision=args.precision)
    print(f"{args.model} {args.input_shape}, {spec.name} {spec.target}, {args.threads} threads", flush=True)

    rows, tuning_s = [], 0.0
    for trials in parse_checkpoints(args.checkpoints):
        try:
            tuned = ts.tune(imported, spec, trials=trials, work_dir=args.work_dir, shuffle=args.shuffle,
                            precision=args.precision)
        except KeyboardInterrupt:
            break
        outcome, kept, pick = tuned.tuning.outcome, tuned.tuning.kept_default, tuned.tuning.pick
        tuning_s += outcome.seconds
        ms_, per_round = interleaved_ms({"tuned": lambda a: tuned(a), "pick": lambda a: pick(a),
                                         "untuned": lambda a: untuned(a), "onnxruntime": ort_run},
                                        x, rounds=args.rounds, repeat=args.repeat)
        estimate = outcome.estimate_seconds
        rows.append({"trials": database.own_trials(outcome.directory), "tuning_s": round(tuning_s, 1),
                     **{f"{k}_ms": round(v, 3) for k, v in ms_.items()},
                     "estimate_ms": round(estimate * 1e3, 3) if estimate else None,
                     "tuned_vs_ort": round(ms_["tuned"] / ms_["onnxruntime"], 3),
                     "tuned_vs_ort_rounds": round_ratios(per_round, "tuned", "onnxruntime"),
                     "untuned_vs_ort_rounds": round_ratios(per_round, "untuned", "onnxruntime"),
                     "kept_default": [v.kernel for v in kept], "kernels": len(outcome.workloads)})
        print(f"after {rows[-1]['trials']} trials ({tuning_s / 60:.1f} min tuning): tuned {ms_['tuned']:.2f} ms "
              f"({len(kept)} of {len(outcome.workloads)} kernels kept their default schedule), MetaSchedule's pick "
              f"{ms_['pick']:.2f} ms, untuned {ms_['untuned']:.2f} ms, ONNX Runtime {ms_['onnxruntime']:.2f} ms "
              f"-> tuned/ORT {rows[-1]['tuned_vs_ort']:.2f} (rounds {_span(rows[-1]['tuned_vs_ort_rounds'])})", flush=True)

    table = ["| trials | tuning (min) | tuned TVM (ms) | kernels kept default | MetaSchedule's pick (ms) "
             "| untuned TVM (ms) | ONNX Runtime (ms) | tuned / ORT | tuned / ORT per round "
             "| untuned / ORT per round | MetaSchedule sum of kernels (ms) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['trials']} | {r['tuning_s'] / 60:.1f} | {r['tuned_ms']:.2f} | {len(r['kept_default'])}/{r['kernels']} "
              f"| {r['pick_ms']:.2f} | {r['untuned_ms']:.2f} | {r['onnxruntime_ms']:.2f} | {r['tuned_vs_ort']:.2f} | "
              f"{_span(r['tuned_vs_ort_rounds'])} | {_span(r['untuned_vs_ort_rounds'])} | "
              f"{r['estimate_ms'] if r['estimate_ms'] is not None else '-'} |" for r in rows]
    header = (f"{args.model} {args.input_shape} {args.precision} batch 1, {args.threads} threads, {spec.target.get('mcpu')}, "
              f"TVM {TVM_VERSION}, shuffle={args.shuffle}; medians of {args.rounds} interleaved rounds x "
              f"{args.repeat} calls per engine; tvm_shuffle {revision}" + (f"; {args.note}" if args.note else ""))
    print("\n" + header + "\n\n" + "\n".join(table))

    RESULTS.mkdir(exist_ok=True)
    stem = (f"tune_x86_{args.model}_{args.input_shape.replace(',', 'x')}_{spec.target.get('mcpu')}_"
            f"{args.threads}threads_{args.shuffle}" + ("" if args.precision == "fp32" else f"_{args.precision}"))
    (RESULTS / f"{stem}.md").write_text(header + "\n\n" + "\n".join(table) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        "model": args.model, "input_shape": args.input_shape, "threads": args.threads, "repeat": args.repeat,
        "rounds": args.rounds, "shuffle": args.shuffle, "precision": args.precision, "target": spec.target, "tvm": TVM_VERSION,
        "revision": revision, "machine": platform.node(), "note": args.note,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "rows": rows},
        indent=2) + "\n")
    print(f"\nwritten: {RESULTS / stem}.md / .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
