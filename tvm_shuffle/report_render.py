"""Render a report's data: JSON and CSV rows first, then Markdown, then one self-contained HTML page.

The HTML page has no scripts and loads nothing: styles are inline and the
charts are SVG drawn here (latency per engine, latency versus tuning trials,
per-kernel breakdown), with ``<title>`` tooltips for details.
"""

from __future__ import annotations

import csv
import html
import json
import math
import string
from pathlib import Path
from typing import Any, Iterable, Sequence

from tvm_shuffle import static_check
from tvm_shuffle.errors import UserError

TEMPLATE = Path(__file__).with_name("report_template.html")
TOP_KERNELS = 20  # kernels shown in the chart and the Markdown table (the CSV has all)
CATEGORY_COLORS = {"compute": "#3b6fd8", "data movement": "#e0812f", "VM runtime": "#8c94a6"}
ENGINE_COLORS = {"tvm_shuffle-tuned": "#1f8a4c", "tvm_shuffle-untuned": "#7cc29a"}
DEFAULT_COLOR = "#3b6fd8"
ENGINE_CSV_COLUMNS = ("name", "label", "version", "status", "reason", "median_ms", "p90_ms", "min_ms", "mean_ms",
                      "std_ms", "max_abs_err", "rel_logit_err", "top1_agreement", "numerics_note", "weight_bytes")
KERNEL_CSV_COLUMNS = ("kernel", "category", "calls", "us", "share", "flops", "bytes", "gflops", "gbps",
                      "pct_peak_flops", "pct_peak_bw")
MODEL_CSV_COLUMNS = ("name", "family", "groups", "width", "macs", "params", "paper_macs", "paper_params")


# ---------------------------------------------------------------------------
# Formatting


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 100 else f"{value:.1f}"


def fmt_err(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def fmt_pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def fmt_millions(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}M"


def title(data: dict) -> str:
    shape = "x".join(map(str, data["model"]["input_shape"]))
    return f"{data['model']['name']} ({shape}) on {data['target']['name']}: tvm_shuffle and its peers"


def subtitle(data: dict) -> str:
    m, d = data["machine"], data["device"]
    where = (f"remote {'emulated ' if d['emulated'] else ''}device {d['key']!r} ({d['arch']}) via {d['tracker']}; "
             f"peers and numerics reference on {m['cpu']}") if d["kind"] == "remote" else m["cpu"]
    return f"{where}, {data['setup']['threads']} threads, {timing_words(data['setup'])}, {data['created']}"


def timing_words(setup: dict) -> str:
    rounds = setup.get("rounds", 1)
    return (f"{setup['repeat']} timed runs per engine in {rounds} interleaved rounds, {setup['warmup']} warm-up "
            f"runs before each" if rounds > 1 else f"{setup['warmup']} warm-up + {setup['repeat']} timed runs per engine")


def speedup_cell(data: dict, a: dict, b: dict) -> str:
    """``a`` against ``b``: the ratio of medians, and its range over the rounds when there were several."""
    text = f"{data['speedups'][a['name']][b['name']]:.2f}x"
    low_high = data.get("speedup_ranges", {}).get(a["name"], {}).get(b["name"])
    return text + (f" ({low_high[0]:.2f}-{low_high[1]:.2f})" if low_high and data["setup"].get("rounds", 1) > 1 else "")


def ok_engines(data: dict) -> list[dict]:
    return [r for r in data["engines"] if r["status"] == "ok"]


def engine_cells(row: dict, reference: str | None) -> list[str]:
    """Median, p90, min, std, max abs err, top-1, weights in MB (or the reason it did not run)."""
    if row["status"] != "ok":
        return [row["reason"]]
    top1 = "-" if row["top1_agreement"] is None else f"{100 * row['top1_agreement']:.0f}%"
    error = "reference" if row["name"] == reference else fmt_err(row["max_abs_err"])
    return [fmt_ms(row["median_ms"]), fmt_ms(row["p90_ms"]), fmt_ms(row["min_ms"]), fmt_ms(row["std_ms"]),
            error, "reference" if row["name"] == reference else top1, fmt_mb(row.get("weight_bytes"))]


def fmt_mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.2f}"


def engine_note(row: dict) -> str:
    """How the engine was configured, plus what it ran from (tuning records, remote device)."""
    details = row.get("details") or {}
    extra = [f"{details['trials']} trials in {details['database']}" if "trials" in details else "",
             f"on the {details['device']}" if "device" in details else "",
             f"computed in {details['inference_precision']}" if "inference_precision" in details else "",
             _precision_words(details.get("precision")),
             f"relative logit error {row['rel_logit_err']:.1e}" if row.get("rel_logit_err") else ""]
    return "; ".join([row["note"], *filter(None, extra)])


def _precision_words(precision: dict | None) -> str:
    """A tvm_shuffle row's precision, when it is not fp32 (a build's manifest ``precision``)."""
    if not precision or precision.get("name") == "fp32":
        return ""
    return f"{precision['name']} ({precision['mode']})"


WEIGHTS_NOTE = ("Weights MB: the weights as each engine stores them (tvm_shuffle: the library's constants; "
                "ONNX Runtime and OpenVINO: the ONNX file's initializers; PyTorch: the state dict; ncnn: its .bin).")
ENGINE_HEADER = ("engine", "version", "median ms", "p90 ms", "min ms", "std ms", "max abs err", "top-1 agree",
                 "weights MB")


# ---------------------------------------------------------------------------
# Data files


def write_json(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def engine_csv_rows(data: dict) -> tuple[list[str], list[dict]]:
    """One row per engine; a ``speedup_vs_<engine>`` column per other engine that ran."""
    names = [r["name"] for r in ok_engines(data)]
    columns = [*ENGINE_CSV_COLUMNS, *(f"speedup_vs_{n}" for n in names)]
    rows = []
    for row in data["engines"]:
        ratios = data["speedups"].get(row["name"], {})
        rows.append({**row, **{f"speedup_vs_{n}": ratios.get(n) for n in names}})
    return columns, rows


# ---------------------------------------------------------------------------
# Markdown


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: dict) -> str:
    m, s, ref = data["machine"], data["setup"], data["setup"]["reference"]
    out = [f"# {title(data)}", "", subtitle(data), ""]
    out += ["## Setup", "", md_table(("", ""), setup_facts(data), "ll"), ""]
    out += ["## Latency and numerics", ""]
    rows = []
    for r in data["engines"]:
        cells = engine_cells(r, ref)
        rows.append([r["label"], r["version"], *(cells if len(cells) > 1 else [f"*{cells[0]}*", *["-"] * 6])])
    out += [md_table(ENGINE_HEADER, rows, "llrrrrrrr"), ""]
    out += [f"Numerics: each engine's output on {s['numerics_inputs']} random N(0, 1) inputs against "
            f"{_engine_label(data, ref) if ref else 'no reference (none could run)'}; top-1 agreement is the share "
            f"of inputs whose arg-max class matches. {WEIGHTS_NOTE}", ""]
    notes = [f"- {r['label']}: {engine_note(r)}" for r in data["engines"] if r["note"]]
    out += notes + [""]
    out += ["## Speed-up matrix", "", "Row engine is *x* times faster than column engine (ratio of medians; in "
            "brackets the lowest and highest ratio of the timing rounds, each of which timed every engine once).", ""]
    out += [speedup_markdown(data), ""]
    out += ["## Per-kernel profile", "", kernel_markdown(data, m), ""]
    if data.get("static_check"):
        out += [static_check.markdown(data["static_check"]["rows"], arm_label=data["target"]["name"]), ""]
    out += ["## Latency versus tuning trials", "", tuning_markdown(data), ""]
    if data["models"]:
        out += ["## Model zoo: MACs and parameters", "", "Measured from each model at 1x3x224x224 (multiply-adds of "
                "convolutions and the classifier), beside the papers' figures.", "", model_markdown(data), ""]
    out += ["## Versions", "", md_table(("engine", "version"), [(r["label"], r["version"]) for r in data["engines"]],
                                        "ll"), ""]
    out += ["Command:", "", "```sh", data["command"], "```", ""]
    return "\n".join(out)


def _engine_label(data: dict, name: str) -> str:
    return next((r["label"] for r in data["engines"] if r["name"] == name), name)


def setup_facts(data: dict) -> list[tuple[str, str]]:
    m, s, d, t = data["machine"], data["setup"], data["device"], data["target"]
    model = data["model"]
    peaks = m.get("peaks") or {}
    facts = [
        ("model", f"{model['name']} ({model['source']}), input {'x'.join(map(str, model['input_shape']))} "
                  f"{model['input_dtype']}"),
        ("target", f"{t['name']} ({json.dumps(t['tvm'])}), shuffle {s['shuffle']}"),
        ("CPU", f"{m['cpu']} ({m['arch']}{', virtual machine' if m.get('virtualized') else ''})"),
        ("ISA", " ".join(m["isa"]) or "-"),
        ("cores / threads", f"{m['physical_cores']} physical, {m['logical_cpus']} logical; "
                            f"{s['threads']} threads for every engine"),
        ("clock, memory", f"{fmt(m['mhz'], 0)} MHz, {m['memory_gib']} GiB"),
        ("peak (measured)", f"{fmt(peaks.get('gflops'), 1)} GFLOP/s fp32 sgemm, {fmt(peaks.get('gbps'), 1)} GB/s copy"),
        ("peak (theoretical)", f"{fmt(m.get('theoretical_gflops'), 0)} GFLOP/s (two FMA pipes of the widest vector "
                               "ISA: an upper bound)"),
        ("timing", f"{timing_words(s)}, numpy in, numpy out"),
    ]
    if d["kind"] == "remote":
        threads = s.get("device_threads") or "its default number of"
        facts.insert(3, ("device", f"{'EMULATED ' if d['emulated'] else ''}{d['arch']} device {d['key']!r} via "
                                   f"tracker {d['tracker']}, {threads} threads" +
                                   (" (qemu: timings say nothing about real hardware)" if d["emulated"] else "")))
    if model.get("macs") is not None:
        facts.insert(1, ("MACs / params", f"{fmt_millions(model['macs'])} / {fmt_millions(model['params'])} "
                                          f"(at 224x224; paper: {fmt_millions(model['paper_macs'])} / "
                                          f"{fmt_millions(model['paper_params'])})"))
    if model.get("tvm_flops"):
        facts.insert(1, ("FLOPs (TVM kernels)", f"{fmt_millions(model['tvm_flops'])} at this input shape"))
    return facts


def speedup_markdown(data: dict) -> str:
    ok = ok_engines(data)
    if len(ok) < 2:
        return "*Fewer than two engines ran.*"
    header = ["faster than →", *(r["label"] for r in ok)]
    rows = [[a["label"], *("-" if a is b else speedup_cell(data, a, b) for b in ok)] for a in ok]
    return md_table(header, rows)


def kernel_markdown(data: dict, m: dict) -> str:
    prof = data["profile"]
    if not prof.get("rows"):
        return f"*{prof.get('note', 'no profile')}*"
    shares = ", ".join(f"{k} {fmt_pct(v, 1)}" for k, v in prof["shares"].items())
    head = (f"{prof['note']}. Sum of kernels {prof['total_us'] / 1e3:.3f} ms vs end-to-end median "
            f"{fmt_ms(prof['end_to_end_ms'])} ms. Share of time: **{shares}** (data movement = channel shuffle, "
            "split, concat and other copy-only kernels).")
    rows = [(r["kernel"], r["category"], r["calls"], f"{r['us']:.1f}", fmt_pct(r["share"], 1), fmt_millions(r["flops"]),
             f"{r['bytes'] / 1e6:.2f}", fmt(r["gflops"], 1), fmt(r["gbps"], 1), fmt(r["pct_peak_flops"], 0),
             fmt(r["pct_peak_bw"], 0)) for r in prof["rows"][:TOP_KERNELS]]
    more = len(prof["rows"]) - TOP_KERNELS
    table = md_table(("kernel", "category", "calls", "us", "share", "FLOPs", "MB moved", "GFLOP/s", "GB/s",
                      "% peak FLOP/s", "% peak GB/s"), rows, "llrrrrrrrrr")
    return head + "\n\n" + table + (f"\n\n({more} more kernels in the CSV.)" if more > 0 else "")


def tuning_markdown(data: dict) -> str:
    t = data["tuning"]
    lines = []
    if t["points"]:
        last = t["points"][-1]
        lines.append(f"MetaSchedule's estimate (sum over kernels of calls x best measured) after {last[0]} trials: "
                     f"{last[1]:.3f} ms; first complete estimate at trial {t['points'][0][0]}: "
                     f"{t['points'][0][1]:.3f} ms. Database: `{t['database']}`.")
    if t.get("note"):
        lines.append(f"*{t['note']}*")
    measured = [f"{name} {fmt_ms(t.get(key))} ms" for name, key in (("untuned", "untuned_ms"), ("tuned", "tuned_ms"))
                if t.get(key) is not None]
    if measured:
        lines.append("Measured end to end: " + ", ".join(measured) + ".")
    return "\n\n".join(lines)


def model_markdown(data: dict) -> str:
    here = data["model"]["name"]
    rows = [(f"**{r['name']}**" if r["name"] == here else r["name"], r["family"], fmt(r["groups"]),
             f"{r['width']:.1f}x", fmt_millions(r["macs"]), fmt_millions(r["paper_macs"]),
             fmt_millions(r["params"]), fmt_millions(r["paper_params"])) for r in data["models"]]
    return md_table(("model", "family", "groups", "width", "MACs", "paper MACs", "params", "paper params"), rows,
                    "llrrrrrr")


# ---------------------------------------------------------------------------
# SVG charts


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def bar_chart(items: Sequence[dict], *, unit: str, label_width: int = 190, width: int = 900,
              bar_height: int = 22) -> str:
    """Horizontal bars: ``items`` have label, value, color, tooltip and optionally lo/hi whiskers."""
    if not items:
        return ""
    # Scaled to the bars, not the whiskers: one noisy p90 would squash every bar.
    scale_max = max(i["value"] for i in items) * 1.25 or 1.0
    plot = width - label_width - 80
    height = len(items) * (bar_height + 6) + 34
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" font-family="system-ui, sans-serif" font-size="12">']
    for tick in _ticks(scale_max):
        x = label_width + plot * tick / scale_max
        parts.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 24}" stroke="#e6e9ef"/>'
                     f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" fill="#5b6478">{_tick_text(tick)}'
                     f'</text>')
    for index, item in enumerate(items):
        y = 6 + index * (bar_height + 6)
        w = max(1.0, plot * item["value"] / scale_max)
        parts.append(f'<g><title>{_e(item["tooltip"])}</title>'
                     f'<text x="{label_width - 8}" y="{y + bar_height * 0.7:.1f}" text-anchor="end">'
                     f'{_e(item["label"])}</text>'
                     f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_height}" fill="{item["color"]}" '
                     f'rx="2"/>')
        if item.get("lo") is not None and item.get("hi") is not None:
            x1, x2 = (label_width + plot * min(item[k], scale_max) / scale_max for k in ("lo", "hi"))
            mid = y + bar_height / 2
            parts.append(f'<line x1="{x1:.1f}" y1="{mid}" x2="{x2:.1f}" y2="{mid}" stroke="#1d2330"/>'
                         f'<line x1="{x1:.1f}" y1="{mid - 5}" x2="{x1:.1f}" y2="{mid + 5}" stroke="#1d2330"/>')
            if item["hi"] <= scale_max:  # a clipped whisker has no end cap
                parts.append(f'<line x1="{x2:.1f}" y1="{mid - 5}" x2="{x2:.1f}" y2="{mid + 5}" stroke="#1d2330"/>')
        end = max(w, plot * min(item.get("hi") or 0, scale_max) / scale_max)  # right of the bar and its whisker
        text_x = label_width + end + 6
        parts.append(f'<text x="{text_x:.1f}" y="{y + bar_height * 0.7:.1f}" fill="#1d2330">'
                     f'{_e(item["text"])}</text></g>')
    parts.append(f'<text x="{width - 4}" y="{height - 8}" text-anchor="end" fill="#5b6478">{_e(unit)}</text></svg>')
    return "".join(parts)


def stacked_bar(shares: dict[str, float], *, width: int = 900, height: int = 46) -> str:
    """One bar split by category share, with a legend."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" font-family="system-ui, sans-serif" font-size="12">']
    x = 0.0
    for category, share in shares.items():
        w = width * share
        if w > 0:
            parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="20" '
                         f'fill="{CATEGORY_COLORS.get(category, DEFAULT_COLOR)}">'
                         f'<title>{_e(category)}: {100 * share:.1f}%</title></rect>')
        x += w
    legend_x = 0
    for category, share in shares.items():
        parts.append(f'<rect x="{legend_x}" y="28" width="12" height="12" '
                     f'fill="{CATEGORY_COLORS.get(category, DEFAULT_COLOR)}"/>'
                     f'<text x="{legend_x + 16}" y="39">{_e(category)} {100 * share:.1f}%</text>')
        legend_x += 220
    parts.append("</svg>")
    return "".join(parts)


def line_chart(points: Sequence[Sequence[float]], *, markers: Sequence[tuple[float, float, str, str]], x_label: str,
               y_label: str, width: int = 900, height: int = 320) -> str:
    """A step line of (x, y) points plus labelled markers (x, y, label, colour)."""
    left, right, top, bottom = 60, 20, 14, 44
    xs = [p[0] for p in points] + [m[0] for m in markers] or [0, 1]
    ys = [p[1] for p in points] + [m[1] for m in markers]
    x_max = max(xs) or 1
    y_max = (max(ys) if ys else 1) * 1.1 or 1
    pw, ph = width - left - right, height - top - bottom

    def sx(v):
        return left + pw * v / x_max

    def sy(v):
        return top + ph * (1 - v / y_max)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" font-family="system-ui, sans-serif" font-size="12">']
    for tick in _ticks(y_max):
        parts.append(f'<line x1="{left}" y1="{sy(tick):.1f}" x2="{width - right}" y2="{sy(tick):.1f}" '
                     f'stroke="#e6e9ef"/><text x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end" '
                     f'fill="#5b6478">{_tick_text(tick)}</text>')
    for tick in _ticks(x_max):
        parts.append(f'<text x="{sx(tick):.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                     f'fill="#5b6478">{_tick_text(tick)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{width - right}" y2="{top + ph}" stroke="#5b6478"/>')
    if points:
        path = f"M{sx(points[0][0]):.1f},{sy(points[0][1]):.1f}"
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            path += f" L{sx(x1):.1f},{sy(y0):.1f} L{sx(x1):.1f},{sy(y1):.1f}"
        parts.append(f'<path d="{path}" fill="none" stroke="#1f8a4c" stroke-width="2">'
                     f'<title>MetaSchedule estimate</title></path>')
    if len(markers) > 1:
        joined = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _, _ in markers)
        parts.append(f'<polyline points="{joined}" fill="none" stroke="#8c94a6" stroke-dasharray="6 4"/>')
    for x, y, label, color in markers:
        anchor = "start" if sx(x) < left + pw / 2 else "end"
        dx = 8 if anchor == "start" else -8
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{color}"><title>{_e(label)}</title>'
                     f'</circle><text x="{sx(x) + dx:.1f}" y="{sy(y) - 8:.1f}" text-anchor="{anchor}" '
                     f'fill="{color}">{_e(label)}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
                 f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2:.1f})">{_e(y_label)}</text></svg>')
    return "".join(parts)


def _ticks(maximum: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to ``maximum``."""
    if maximum <= 0:
        return [0.0]
    step = _nice_step(maximum / count)
    ticks, value = [], 0.0
    while value <= maximum + 1e-12:
        ticks.append(value)
        value += step
    return ticks


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    base = raw / 10 ** exponent
    nice = 1 if base <= 1 else 2 if base <= 2 else 5 if base <= 5 else 10
    return nice * 10 ** exponent


def _tick_text(value: float) -> str:
    return f"{value:g}"


def figure(svg: str, caption: str, chart_id: str) -> str:
    return f'<figure class="chart" id="{chart_id}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


# ---------------------------------------------------------------------------
# HTML


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1, classes: str = "",
               row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        cells = "".join(_cell(c, i < left) for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _cell(content: Any, left: bool) -> str:
    if isinstance(content, tuple):  # (text, css class, colspan)
        text, cls, span = content
        return f'<td class="{cls}" colspan="{span}">{_e(text)}</td>'
    return f'<td class="l">{_e(content)}</td>' if left else f"<td>{_e(content)}</td>"


def latency_chart(data: dict) -> str:
    items = [{"label": r["label"], "value": r["median_ms"], "lo": r["min_ms"], "hi": r["p90_ms"],
              "color": ENGINE_COLORS.get(r["name"], DEFAULT_COLOR), "text": f"{fmt_ms(r['median_ms'])} ms",
              "tooltip": f"{r['label']}: median {fmt_ms(r['median_ms'])} ms, min {fmt_ms(r['min_ms'])}, "
                         f"p90 {fmt_ms(r['p90_ms'])}, std {fmt_ms(r['std_ms'])} ({r['version']})"}
             for r in sorted(ok_engines(data), key=lambda r: r["median_ms"])]
    if not items:
        return '<p class="note">No engine ran.</p>'
    return figure(bar_chart(items, unit="ms per inference"),
                  "Median latency per engine; whiskers from min to p90. Hover for details.", "chart-latency")


def engine_table(data: dict) -> str:
    ref = data["setup"]["reference"]
    rows, classes = [], []
    for r in data["engines"]:
        cells = engine_cells(r, ref)
        if len(cells) == 1:
            rows.append([r["label"], r["version"], (cells[0], "l", 7)])
            classes.append("bad")
        else:
            rows.append([r["label"], r["version"], *cells])
            classes.append("")
    notes = "".join(f"<li>{_e(r['label'])}: {_e(engine_note(r))}</li>" for r in data["engines"] if r["note"])
    reference = _engine_label(data, ref) if ref else "no reference (none could run)"
    return (html_table(ENGINE_HEADER, rows, left=2, row_classes=classes) +
            f'<p class="note">Numerics: output on {data["setup"]["numerics_inputs"]} random N(0, 1) inputs against '
            f'{_e(reference)}; top-1 agreement is the share of inputs whose arg-max class matches. '
            f'{_e(WEIGHTS_NOTE)}</p>'
            f'<ul class="note">{notes}</ul>')


def speedup_table(data: dict) -> str:
    ok = ok_engines(data)
    if len(ok) < 2:
        return '<p class="note">Fewer than two engines ran.</p>'
    rows = []
    for a in ok:
        row = [a["label"]]
        for b in ok:
            if a is b:
                row.append(("-", "", 1))
            else:
                ratio = data["speedups"][a["name"]][b["name"]]
                row.append((speedup_cell(data, a, b), "fast" if ratio > 1.05 else "slow" if ratio < 0.95 else "", 1))
        rows.append(row)
    return (html_table(["faster than →", *(r["label"] for r in ok)], rows, classes="matrix") +
            '<p class="note">Row engine is x times faster than column engine (ratio of medians; in brackets '
            'the lowest and highest ratio of the timing rounds, each of which timed every engine once).</p>')


def kernel_section(data: dict) -> str:
    prof = data["profile"]
    if not prof.get("rows"):
        return f'<p class="note">{_e(prof.get("note", "no profile"))}</p>'
    top = prof["rows"][:TOP_KERNELS]
    items = [{"label": _short(r["kernel"]), "value": r["us"],
              "color": CATEGORY_COLORS.get(r["category"], DEFAULT_COLOR),
              "text": f"{r['us']:.1f} us ({fmt_pct(r['share'], 1)})",
              "tooltip": f"{r['kernel']} ({r['category']}): {r['calls']} call(s), {r['us']:.1f} us per inference, "
                         f"{fmt(r['gflops'], 1)} GFLOP/s, {fmt(r['gbps'], 1)} GB/s"} for r in top]
    shares = figure(stacked_bar(prof["shares"]), "Share of the profiled time by kernel category "
                    "(data movement: channel shuffle, split, concat and other copy-only kernels).", "chart-shares")
    bars = figure(bar_chart(items, unit="us per inference", label_width=300),
                  f"The {len(top)} slowest kernels of {len(prof['rows'])}; colour = category.", "chart-kernels")
    rows = [(r["kernel"], r["category"], r["calls"], f"{r['us']:.1f}", fmt_pct(r["share"], 1),
             fmt_millions(r["flops"]), f"{r['bytes'] / 1e6:.2f}", fmt(r["gflops"], 1), fmt(r["gbps"], 1),
             fmt(r["pct_peak_flops"], 0), fmt(r["pct_peak_bw"], 0)) for r in top]
    table = html_table(("kernel", "category", "calls", "us", "share", "FLOPs", "MB moved", "GFLOP/s", "GB/s",
                        "% peak FLOP/s", "% peak GB/s"), rows, left=2)
    peaks = data["machine"].get("peaks") or {}
    head = (f'<p class="note">{_e(prof["note"])}. Sum of kernels {prof["total_us"] / 1e3:.3f} ms vs end-to-end '
            f'median {fmt_ms(prof["end_to_end_ms"])} ms. Peaks: {fmt(peaks.get("gflops"), 1)} GFLOP/s, '
            f'{fmt(peaks.get("gbps"), 1)} GB/s (measured).</p>')
    return head + shares + bars + table


def static_section(data: dict) -> str:
    """The static code check of a board's build (reports made without the board), as an HTML table."""
    static = data.get("static_check")
    if not static:
        return ""
    rows = static["rows"]
    columns = static_check.MARKDOWN_COLUMNS
    body = [(r["kernel"], fmt(r.get("calls"), 0), fmt(r["flops"] / 1e6 if r.get("flops") else None, 2),
             *(static_check.pair_cell(r, key) for _, key in columns), "; ".join(r["flags"]) or "ok") for r in rows]
    table = html_table(("kernel", "calls", "MFLOP", *(title for title, _ in columns), "flags"), body, left=1)
    flagged = static["flagged"]
    return (f'<h3>Static code check of the kernels ({_e(data["target"]["name"])}, no device)</h3>'
            f'<p class="note">A {_e(static["method"])}. Counts of each kernel\'s hottest innermost loop as '
            f'<code>aarch64 / x86-64</code>. {len(flagged)} of {len(rows)} kernels flagged (a stack spill or a '
            f'scalar FMA in an innermost loop).</p>' + table)


def _short(name: str, limit: int = 44) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def tuning_section(data: dict) -> str:
    t = data["tuning"]
    markers = [(trials, t[key], f"{label}: {fmt_ms(t[key])} ms measured", color)
               for label, key, trials, color in (("untuned", "untuned_ms", 0, "#b4553c"),
                                                 ("tuned", "tuned_ms", t.get("trials"), "#1f8a4c"))
               if t.get(key) is not None and trials is not None]
    parts = []
    if t["points"] or (t.get("trials") and markers):
        parts.append(figure(line_chart(t["points"], markers=markers, x_label="trials measured",
                                       y_label="ms per inference"),
                            "Dots: measured end to end, untuned (0 trials) and tuned (every trial in the database). "
                            "Line: MetaSchedule's estimate (sum over kernels of calls x best measured latency), "
                            "drawn once every kernel has a record.", "chart-tuning"))
    if t.get("note"):
        parts.append(f'<p class="note">{_e(t["note"])}</p>')
    return "".join(parts)


def model_table_html(data: dict) -> str:
    if not data["models"]:
        return '<p class="note">Left out (--no-zoo-table).</p>'
    here = data["model"]["name"]
    rows = [(r["name"], r["family"], fmt(r["groups"]), f"{r['width']:.1f}x", fmt_millions(r["macs"]),
             fmt_millions(r["paper_macs"]), fmt_millions(r["params"]), fmt_millions(r["paper_params"]))
            for r in data["models"]]
    return (html_table(("model", "family", "groups", "width", "MACs", "paper MACs", "params", "paper params"), rows,
                       row_classes=["here" if r["name"] == here else "" for r in data["models"]]) +
            '<p class="note">Measured from each model at 1x3x224x224 (multiply-adds of convolutions and the '
            'classifier), beside the papers\' figures.</p>')


def render_html(data: dict) -> str:
    facts = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in setup_facts(data))
    versions = html_table(("engine", "version"), [(r["label"], r["version"]) for r in data["engines"]], left=2)
    versions += f"<p>Command:</p><pre><code>{_e(data['command'])}</code></pre>"
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=_e(title(data)), subtitle=_e(subtitle(data)), setup=f'<dl class="facts">{facts}</dl>',
        latency_chart=latency_chart(data), engine_table=engine_table(data), speedup_table=speedup_table(data),
        kernel_section=kernel_section(data) + static_section(data), tuning_section=tuning_section(data),
        model_table=model_table_html(data), versions=versions)


# ---------------------------------------------------------------------------


def write_all(data: dict, out_dir: Path) -> list[Path]:
    """Write every file of a report into ``out_dir``; returns their paths (data first)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    stem = out_dir / data["stem"]
    columns, engine_rows = engine_csv_rows(data)
    paths = [
        write_json(data, stem.with_name(stem.name + ".json")),
        write_csv(stem.with_name(stem.name + "_engines.csv"), columns, engine_rows),
        write_csv(stem.with_name(stem.name + "_kernels.csv"), KERNEL_CSV_COLUMNS, data["profile"].get("rows", [])),
        write_csv(stem.with_name(stem.name + "_tuning.csv"), ("trial", "estimate_ms"),
                  ({"trial": t, "estimate_ms": ms} for t, ms in data["tuning"]["points"])),
    ]
    if data["models"]:
        paths.append(write_csv(stem.with_name(stem.name + "_models.csv"), MODEL_CSV_COLUMNS, data["models"]))
    if data.get("static_check"):
        rows = [{**r, "flags": "; ".join(r["flags"])} for r in data["static_check"]["rows"]]
        paths.append(write_csv(stem.with_name(stem.name + "_static.csv"), list(dict.fromkeys(k for r in rows for k in r)),
                               rows))
    paths.append(stem.with_name(stem.name + ".md"))
    paths[-1].write_text(render_markdown(data), encoding="utf-8")
    paths.append(stem.with_name(stem.name + ".html"))
    paths[-1].write_text(render_html(data), encoding="utf-8")
    return paths


__all__ = ["write_all", "render_markdown", "render_html", "bar_chart", "line_chart", "stacked_bar", "fmt_ms"]
