"""Channel-shuffle fusion, fused against stock in the same run: ShuffleNet units and whole models.

    python benchmarks/shuffle_units.py [--threads 2] [--repeat 40] [--all] [--out benchmarks/results]
                                       [--trials N --work-dir work/shuffle-bench] [--only TEXT]

Both variants are built the same way (untuned: the default schedules of
``tvm_shuffle/schedules/``; with ``--trials N``: each tuned with N trials, stock and
fused in separate record databases so neither reuses the other's
measurements), loaded as exported libraries and timed in alternating
rounds, so drift on a shared machine hits both alike; read the ratio.

* v2 unit rows: the start of a stage of ShuffleNetV2 1.0x (its stride-2
  unit, then one stride-1 unit) and the 1x1 conv that reads the output, as
  inside the network: a stride-1 unit alone would start from an unshuffled
  tensor and end in a model output, which no real unit does.
* v1 unit rows: one stride-1 unit (grouped conv, shuffle, depthwise, grouped
  conv, residual) at stage 3's shape.
* model rows: every v2 width, one width per v1 group count (``--all``: the
  whole zoo), at 1x3x224x224.

``data moved`` is the share of the per-kernel profile (``tvm_shuffle.profile``)
spent in kernels that only move data: shuffles, splits, concats, and the
copies fusion leaves. Writes ``shuffle_units-<target>-<cpu>-<threads>.json``
(rows) and ``.md`` (the table) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from tvm_shuffle import host

MODES = ("stock", "fused")
ROUNDS = 8


def unit_cases():
    """(name, torch module, input shape) for the unit microbenchmarks."""
    from torch import nn

    from tvm_shuffle import models

    cases = []
    v2 = models.MODELS["shufflenet_v2_x1_0"]
    inputs = v2.stage_channels[0:3]
    for stage, (inp, channels, size) in enumerate(zip(inputs, v2.stage_channels[1:4], (28, 14, 7)), start=2):
        module = nn.Sequential(models.InvertedResidual(inp, channels, 2),
                               models.InvertedResidual(channels, channels, 1), nn.Conv2d(channels, channels, 1))
        cases.append((f"v2 stage{stage} s2 unit + unit + 1x1 ({channels}ch {size}x{size})", module,
                      (1, inp, 2 * size, 2 * size)))
    for groups in (3, 8):
        channels = models.MODELS[f"shufflenet_v1_g{groups}_x1_0"].stage_channels[2]
        module = models.ShuffleV1Unit(channels, channels, stride=1, groups=groups)
        cases.append((f"v1 g{groups} unit ({channels}ch 14x14)", module, (1, channels, 14, 14)))
    return cases


def model_cases(everything: bool):
    from tvm_shuffle import models

    names = [n for n, s in models.MODELS.items() if everything or s.family == "v2" or s.width == 1.0]
    return [(name, models.build_model(name), (1, 3, 224, 224)) for name in names]


def build_variant(imported, spec, mode: str, *, trials: int | None, work_dir: Path):
    """One variant as a :class:`tvm_shuffle.api.Compiled`, tuned with ``trials`` trials first when given."""
    import tvm_shuffle as ts

    if not trials:
        return ts.compile(imported, spec, shuffle=mode, quiet=True)
    return ts.tune(imported, spec, trials=trials, work_dir=work_dir / mode, shuffle=mode, progress=False)


def measure_case(name, module, shape, spec, repeat: int, *, trials: int | None = None,
                 work_dir: Path = Path("work/shuffle-bench")) -> dict:
    """Build (and tune) both variants, time them in alternating rounds, profile each once."""
    import numpy as np

    from tvm_shuffle import frontends, models, passes, profile
    from tvm_shuffle.schedules import FusionReport, fuse_shuffles

    module = models.randomize_batchnorm(module.eval())
    imported = frontends.from_torch_module(module, shape, name=name)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    row = {"case": name, "input": list(shape)}
    compiled = {mode: build_variant(imported, spec, mode, trials=trials, work_dir=work_dir) for mode in MODES}
    report = FusionReport()
    fuse_shuffles(passes.optimize(imported.mod, shuffle="stock"), report)
    row["shuffles"], row["shuffles_fused"] = len(report.shuffles), report.fused
    times = {mode: [] for mode in MODES}
    for _ in range(ROUNDS):
        for mode in MODES:
            times[mode] += compiled[mode].benchmark(x, warmup=2, repeat=max(1, repeat // ROUNDS))
    outputs = [compiled[mode](x)[0] for mode in MODES]
    row["max_abs_diff"] = float(np.abs(outputs[0] - outputs[1]).max())
    for mode in MODES:
        rows = compiled[mode].profile(x)
        moved = [r for r in rows if r.category == profile.DATA_MOVEMENT]
        row[mode] = {"ms": statistics.median(times[mode]) * 1e3,
                     "data_moved_us": sum(r.us for r in moved),
                     "data_moved_share": sum(r.share for r in moved),
                     "data_kernels": sorted({r.name for r in moved})}
    row["speedup"] = row["stock"]["ms"] / row["fused"]["ms"]
    return row


def render(rows, header: str) -> str:
    lines = [header, "",
             "| case | shuffles fused | stock ms | fused ms | stock/fused | data moved, stock | data moved, fused |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        s, f = r["stock"], r["fused"]
        lines.append(f"| {r['case']} | {r['shuffles_fused']}/{r['shuffles']} | {s['ms']:.3f} | {f['ms']:.3f} | "
                     f"{r['speedup']:.2f} | {s['data_moved_share']:.1%} ({s['data_moved_us']:.0f} us) | "
                     f"{f['data_moved_share']:.1%} ({f['data_moved_us']:.0f} us) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="x86", help="a local CPU target name (default: x86, this host)")
    parser.add_argument("--threads", type=int, default=host.physical_cores(), help="TVM threads for both variants")
    parser.add_argument("--repeat", type=int, default=40, help="timed runs per variant (split into rounds)")
    parser.add_argument("--all", action="store_true", help="every zoo model end to end, not one width per v1 group")
    parser.add_argument("--units-only", action="store_true", help="skip the whole-model rows")
    parser.add_argument("--only", default="", help="only the cases whose name contains this text")
    parser.add_argument("--trials", type=int, help="tune each variant with this many trials first (default: untuned)")
    parser.add_argument("--work-dir", default="work/shuffle-bench", help="tuning records, one database per variant")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="directory for the results")
    args = parser.parse_args(argv)
    from tvm_shuffle.checkout import require_checkout

    require_checkout(Path(__file__).resolve().parents[1])
    host.export_thread_settings(args.threads)

    from tqdm import tqdm

    from tvm_shuffle import targets
    from tvm_shuffle.tvm_compat import TVM_VERSION

    spec = targets.get(args.target)
    cases = [c for c in unit_cases() + ([] if args.units_only else model_cases(args.all)) if args.only in c[0]]
    rows = [measure_case(*case, spec, args.repeat, trials=args.trials, work_dir=Path(args.work_dir))
            for case in tqdm(cases, desc="benchmark", unit="case")]
    cpu = spec.target.get("mcpu", "cpu")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    how = f"Tuned, {args.trials} trials per variant" if args.trials else "Untuned (default schedules)"
    header = (f"{how}, {spec.name} mcpu={cpu}, {args.threads} thread(s), TVM {TVM_VERSION}, "
              f"{platform.node()} (load average {load} at the end); median of {args.repeat} runs per variant "
              f"in {ROUNDS} alternating rounds.")
    table = render(rows, header)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"shuffle_units-{spec.name}-{cpu}-{args.threads}thread{'s' if args.threads > 1 else ''}"
                  + (f"-tuned{args.trials}" if args.trials else "") + (f"-{args.only}" if args.only else ""))
    stem.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
