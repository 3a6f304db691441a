"""Reduced precision on this x86 machine: tvm_shuffle bf16 or int8 against the peers' fp32 and reduced precision.

    python benchmarks/precision_x86.py --precision bf16 [--model shufflenet_v2_x1_0] [--threads 2]
                                       [--repeat 200] [--rounds 10]
    python benchmarks/precision_x86.py --precision int8 [--calibration FILE.npy] [--calibrator minmax|percentile]

Times, in interleaved rounds (each round times every engine once after its
warm-up, so the engines of a round saw the same machine load), batch 1 at
1x3x224x224, the engines of :data:`SUITES`: for bf16, tvm_shuffle untuned in
fp32 and bf16, OpenVINO held to f32 and with its default settings (it picks
bf16 on CPUs with AVX512_BF16 or AMX; the table says what it used), ONNX
Runtime fp32; for int8, tvm_shuffle fp32 and int8, ONNX Runtime and OpenVINO
in f32 and running the QDQ model ``onnxruntime.quantization.quantize_static``
writes from the same calibration set. The model's BatchNorm statistics are
randomized (:func:`tvm_shuffle.models.randomize_batchnorm`), so its logits
depend on every layer and the error columns mean something. Numerics of
every engine against fp32 PyTorch (max abs error, relative logit error,
top-1 agreement) come from the report (:func:`tvm_shuffle.report.report`).
Prints each round's ratio of the tvm_shuffle row in that precision to the
others and their range, and writes Markdown and JSON to
``benchmarks/results/precision_x86_*``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# precision -> (the engines timed, the tvm_shuffle row every other is compared with)
SUITES = {
    "bf16": (("tvm_shuffle-untuned", "tvm_shuffle-bf16", "openvino", "openvino-default", "onnxruntime"),
             "tvm_shuffle-bf16"),
    "int8": (("tvm_shuffle-untuned", "tvm_shuffle-int8", "onnxruntime", "openvino", "onnxruntime-int8",
              "openvino-int8"), "tvm_shuffle-int8"),
}
# The goals, each against the fastest of a group of peers in the same round.
GOALS = {
    "bf16": (("OpenVINO with its defaults", ("openvino-default",), 0.8),),
    "int8": (("the best fp32 peer", ("onnxruntime", "openvino"), 0.5),
             ("the best int8 peer", ("onnxruntime-int8", "openvino-int8"), 0.8)),
}
INPUT_SHAPE = (1, 3, 224, 224)


def round_ratios(rows: dict, engine: str, baseline: str) -> list[float]:
    """``engine``'s time over ``baseline``'s in each round."""
    return [round(a / b, 3) for a, b in zip(rows[engine]["rounds_ms"], rows[baseline]["rounds_ms"])]


def best_of_round(rows: dict, subject: str, group: tuple) -> list[float]:
    """``subject``'s time over the fastest engine of ``group`` in each round (the engines that ran)."""
    ran = [rows[name]["rounds_ms"] for name in group if rows.get(name, {}).get("status") == "ok"]
    return [round(mine / min(times), 3) for mine, *times in zip(rows[subject]["rounds_ms"], *ran)] if ran else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=tuple(SUITES), default="bf16")
    parser.add_argument("--model", default="shufflenet_v2_x1_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=200, help="timed runs per engine, all rounds together")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calibration", help="int8: a .npy calibration batch (default: the synthetic set)")
    parser.add_argument("--calibrator", default="minmax", help="int8: minmax or percentile")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    engines, subject = SUITES[args.precision]

    from tvm_shuffle import machine, models, report
    from tvm_shuffle.targets import get

    module = models.randomize_batchnorm(models.build_model(args.model).eval())
    result = report.report(module, "x86", input_shape=INPUT_SHAPE, peers=list(engines), threads=args.threads,
                           repeat=args.repeat, rounds=args.rounds, zoo_table=False, calibration=args.calibration,
                           calibrator=args.calibrator, command=f"benchmarks/precision_x86.py --precision {args.precision}")
    rows = {r["name"]: r for r in result.engines}
    failed = {name: row["reason"] for name, row in rows.items() if row["status"] != "ok"}
    ratios = {base: round_ratios(rows, subject, base) for base in engines
              if base != subject and base not in failed and subject not in failed}
    info = machine.describe(args.threads)
    spec = get("x86")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    stem = f"precision_x86_{args.precision}_{args.model}_{spec.target['mcpu']}_{args.threads}t_{stamp}"
    calibration = (f" Calibration: {args.calibration or 'synthetic (8 seeded N(0,1) images)'}, {args.calibrator}."
                   if args.precision == "int8" else "")
    lines = [f"# {args.model} 1x3x224x224, batch 1, {args.threads} threads, {info.get('cpu', platform.processor())}",
             "", f"{args.rounds} interleaved rounds, {args.repeat} timed runs per engine in all.{calibration} "
             "BatchNorm statistics randomized; numerics against fp32 PyTorch on the report's random inputs "
             "(SNR = -20 log10 of the relative logit error); weights as each engine stores them.", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| engine | median ms | rounds (ms) | max abs err | rel logit err | SNR dB | top-1 | precision | weights MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in engines:
        row = rows[name]
        if row["status"] != "ok":
            lines.append(f"| {row['label']} | {row['reason']} | | | | | | | |")
            continue
        details = row.get("details") or {}
        precision = details.get("inference_precision") or (
            f"{details['precision']['name']} ({details['precision']['mode']})" if details.get("precision") else "fp32")
        rel, err, top1 = row.get("rel_logit_err"), row["max_abs_err"], row["top1_agreement"]
        weights = row.get("weight_bytes")
        lines.append(f"| {row['label']} | {row['median_ms']:.3f} | {', '.join(f'{t:.2f}' for t in row['rounds_ms'])} "
                     f"| {'-' if err is None else f'{err:.1e}'} | {'-' if rel is None else f'{rel:.1e}'} "
                     f"| {'-' if not rel else f'{-20 * math.log10(rel):.1f}'} "
                     f"| {'-' if top1 is None else f'{100 * top1:.0f}%'} "
                     f"| {precision} | {'-' if weights is None else f'{weights / 1e6:.2f}'} |")
    lines += ["", f"{rows[subject]['label']} time over each engine's, per round (below 1: {rows[subject]['label']} faster):", ""]
    for base, values in ratios.items():
        lines.append(f"- {rows[base]['label']}: median {statistics.median(values):.2f}, range "
                     f"{min(values):.2f}-{max(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")
    goals = {label: (best_of_round(rows, subject, group), limit) for label, group, limit in GOALS[args.precision]}
    lines += ["", "Goals (per round, against the fastest of the group in that round):", ""]
    for label, (values, limit) in goals.items():
        if values:
            median = statistics.median(values)
            lines.append(f"- at most {limit}x {label}: median {median:.2f} ({'met' if median <= limit else 'not met'}), "
                         f"range {min(values):.2f}-{max(values):.2f}")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(text, encoding="utf-8")
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"setup": vars(args), "machine": info, "engines": [{k: v for k, v in r.items() if k != "samples_ms"}
                                                          for r in result.engines],
         "ratios": ratios, "goals": goals, "failed": failed}, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
