"""Tuned ShuffleNetV2 on this x86 machine against ONNX Runtime, and latency versus trials.

    python benchmarks/tune_x86.py [--model shufflenet_v2_x1_0] [--checkpoints 64,200,400,800,1200]
                                  [--threads 2] [--repeat 100] [--work-dir work/bench]

Tunes in steps (each resumes the previous one's records), builds and times
the tuned library after every step, and measures the untuned library and
ONNX Runtime (same thread count, fp32, batch 1) in the same run. Prints a
Markdown table and writes it, with the raw numbers as JSON, to
``benchmarks/results/`` under a name that records the setup. The machine
may be shared: each row is a median, and the ratio to ONNX Runtime is what
to read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def parse_checkpoints(text: str) -> list[int]:
    steps = sorted({int(t) for t in text.split(",")})
    if not steps or steps[0] <= 0:
        raise SystemExit("--checkpoints must be positive trial counts, e.g. 64,200,400")
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shufflenet_v2_x1_0")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--checkpoints", default="64,200,400,800,1200", help="cumulative trial counts to time at")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--shuffle", choices=("fused", "stock"), default="fused")
    parser.add_argument("--work-dir", default="work/bench", help="tuning records (resumed if present)")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before any TVM runtime is loaded

    import numpy as np
    import torch

    from tvm_shuffle import build, frontends, models, peers, runtime, targets, timing
    from tvm_shuffle.tuning import database, runner, session
    from tvm_shuffle.tvm_compat import TVM_VERSION

    spec = targets.get("x86")
    imported = frontends.from_zoo(args.model, input_shape=frontends.parse_shape(args.input_shape))
    module = models.build_model(args.model).eval()
    x = np.random.default_rng(0).standard_normal(imported.input_shape).astype("float32")
    scratch = Path(args.work_dir) / "bench-out"

    def latency_ms(out: Path) -> float:
        model = runtime.load(out)
        return timing.median_ms(model.benchmark(x, warmup=10, repeat=args.repeat))

    def onnxruntime_ms() -> float:
        workload = peers.Workload(name=args.model, imported=imported, spec=spec, threads=args.threads,
                                  scratch=scratch, work_dir=Path(args.work_dir), torch_module=module)
        (engine,) = peers.select(["onnxruntime"])
        return timing.median_ms(engine.prepare(workload).times(x, warmup=10, repeat=args.repeat))

    scratch.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    untuned_ms = latency_ms(build.compile_imported(imported, spec, scratch / "untuned", shuffle=args.shuffle))
    ort_ms = onnxruntime_ms()
    print(f"{args.model} {args.input_shape}, {spec.name} {spec.target}, {args.threads} threads, median of "
          f"{args.repeat}: untuned TVM {untuned_ms:.2f} ms, ONNX Runtime {ort_ms:.2f} ms", flush=True)

    device = runner.local(spec)
    rows, tuning_s = [], 0.0
    for trials in parse_checkpoints(args.checkpoints):
        outcome = session.tune(imported, spec, device=device, work_dir=args.work_dir, trials=trials,
                               shuffle=args.shuffle)
        tuning_s += outcome.seconds
        out = build.compile_imported(imported, spec, scratch / "tuned", shuffle=args.shuffle,
                                     database=outcome.database, database_digest=outcome.digest)
        tuned = latency_ms(out)
        estimate = outcome.estimate_seconds
        rows.append({"trials": database.own_trials(outcome.directory), "tuning_s": round(tuning_s, 1),
                     "tuned_ms": round(tuned, 3), "estimate_ms": round(estimate * 1e3, 3) if estimate else None,
                     "vs_ort": round(tuned / ort_ms, 3)})
        print(f"after {rows[-1]['trials']} trials ({tuning_s / 60:.1f} min): tuned {tuned:.2f} ms "
              f"= {tuned / ort_ms:.2f}x ONNX Runtime", flush=True)
        if outcome.interrupted:
            break
    ort_end_ms = onnxruntime_ms()  # again at the end: the machine is shared, the load may have changed

    table = ["| trials | tuning (min) | tuned TVM (ms) | MetaSchedule estimate (ms) | tuned / ONNX Runtime |",
             "|---:|---:|---:|---:|---:|"]
    table += [f"| {r['trials']} | {r['tuning_s'] / 60:.1f} | {r['tuned_ms']:.2f} | "
              f"{r['estimate_ms'] if r['estimate_ms'] is not None else '-'} | {r['vs_ort']:.2f} |" for r in rows]
    header = (f"{args.model} {args.input_shape} fp32 batch 1, {args.threads} threads, {spec.target.get('mcpu')}, "
              f"TVM {TVM_VERSION}; untuned TVM {untuned_ms:.2f} ms; "
              f"ONNX Runtime {ort_ms:.2f} ms (start) / {ort_end_ms:.2f} ms (end); shuffle={args.shuffle}"
              + (f"; {args.note}" if args.note else ""))
    print("\n" + header + "\n\n" + "\n".join(table))

    RESULTS.mkdir(exist_ok=True)
    stem = (f"tune_x86_{args.model}_{args.input_shape.replace(',', 'x')}_{spec.target.get('mcpu')}_"
            f"{args.threads}threads_{args.shuffle}")
    (RESULTS / f"{stem}.md").write_text(header + "\n\n" + "\n".join(table) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        "model": args.model, "input_shape": args.input_shape, "threads": args.threads, "repeat": args.repeat,
        "shuffle": args.shuffle, "target": spec.target, "machine": platform.node(), "note": args.note,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "untuned_ms": round(untuned_ms, 3), "onnxruntime_ms": [round(ort_ms, 3), round(ort_end_ms, 3)],
        "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / stem}.md / .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
