"""int8 on this x86 machine: tvm_shuffle int8 against ONNX Runtime and OpenVINO, fp32 and int8 (QDQ).

    python benchmarks/int8_x86.py [--model shufflenet_v2_x1_0] [--threads 2] [--repeat 100] [--rounds 5]
                                  [--calibration FILE.npy] [--calibrator minmax|percentile]

Times, in interleaved rounds (each round times every engine once after its
warm-up), batch 1 at the model's input shape: tvm_shuffle untuned fp32 and
int8 (``precision="int8"``), ONNX Runtime and OpenVINO (f32), and both
running the QDQ model ``onnxruntime.quantization.quantize_static`` writes
from the same calibration set (``--calibration``; default: the synthetic set
of :mod:`tvm_shuffle.quantize`). Numerics against fp32 PyTorch come from the
report. Prints each round's ratio of tvm_shuffle int8 to the others and
writes Markdown and JSON to ``benchmarks/results/int8_x86_*``. The issue's
goals: int8 at most 0.5x the best fp32 peer and 0.8x the best int8 peer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ENGINES = ("tvm_shuffle-untuned", "tvm_shuffle-int8", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
SUBJECT = "tvm_shuffle-int8"


def round_ratios(rows: dict, engine: str, baseline: str) -> list[float]:
    """``engine``'s time over ``baseline``'s in each round."""
    return [round(a / b, 3) for a, b in zip(rows[engine]["rounds_ms"], rows[baseline]["rounds_ms"])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shufflenet_v2_x1_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=100, help="timed runs per engine, all rounds together")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calibration", default=None)
    parser.add_argument("--calibrator", default="minmax")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)

    from tvm_shuffle import machine, report
    from tvm_shuffle.targets import get

    result = report.report(args.model, "x86", peers=list(ENGINES), threads=args.threads, repeat=args.repeat,
                           rounds=args.rounds, zoo_table=False, command="benchmarks/int8_x86.py",
                           calibration=args.calibration, calibrator=args.calibrator)
    rows = {r["name"]: r for r in result.engines}
    failed = {name: row["reason"] for name, row in rows.items() if row["status"] != "ok"}
    ratios = {base: round_ratios(rows, SUBJECT, base) for base in ENGINES
              if base != SUBJECT and base not in failed and SUBJECT not in failed}
    info = machine.describe(args.threads)
    spec = get("x86")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    stem = f"int8_x86_{args.model}_{spec.target['mcpu']}_{args.threads}t_{stamp}"
    lines = [f"# {args.model} 1x3x224x224, batch 1, {args.threads} threads, {info.get('cpu', platform.processor())}",
             "", f"{args.rounds} interleaved rounds, {args.repeat} timed runs per engine in all. Calibration: "
             f"{args.calibration or 'synthetic (8 seeded N(0,1) images)'}, {args.calibrator}. "
             "Numerics against fp32 PyTorch on the report's random inputs.", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| engine | median ms | rounds (ms) | max abs err | rel logit err | top-1 | precision |",
              "|---|---|---|---|---|---|---|"]
    for name in ENGINES:
        row = rows[name]
        if row["status"] != "ok":
            lines.append(f"| {row['label']} | {row['reason']} | | | | | |")
            continue
        details = row.get("details") or {}
        precision = details.get("inference_precision") or (
            f"{details['precision']['name']} ({details['precision']['mode']})" if details.get("precision") else "fp32")
        rel, err, top1 = row.get("rel_logit_err"), row["max_abs_err"], row["top1_agreement"]
        lines.append(f"| {row['label']} | {row['median_ms']:.3f} | {', '.join(f'{t:.2f}' for t in row['rounds_ms'])} "
                     f"| {'-' if err is None else f'{err:.1e}'} | {'-' if rel is None else f'{rel:.1e}'} "
                     f"| {'-' if top1 is None else f'{100 * top1:.0f}%'} | {precision} |")
    lines += ["", f"{rows[SUBJECT]['label']} time over each engine's, per round (below 1: tvm_shuffle int8 faster):", ""]
    for base, values in ratios.items():
        lines.append(f"- {rows[base]['label']}: median {statistics.median(values):.2f}, range "
                     f"{min(values):.2f}-{max(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(text, encoding="utf-8")
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"setup": vars(args), "machine": info, "engines": [{k: v for k, v in r.items() if k != "samples_ms"}
                                                          for r in result.engines],
         "ratios": ratios, "failed": failed}, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
