"""Facts about the machine a report was measured on, and its peak compute and memory rates.

A latency is meaningless without the machine: every report records the CPU
model, its vector ISA, cores, the threads used and two kinds of peak:

* *theoretical* GFLOP/s: cores x clock x fp32 FLOPs per cycle of the widest
  vector ISA with two FMA pipes (an upper bound: Zen 4, for one, runs AVX-512
  on 256-bit pipes, half this figure);
* *measured* GFLOP/s and GB/s: the fastest of many PyTorch sgemms (1024^2)
  and tensor copies with the report's thread count, i.e. what a tuned
  library can hope to reach here. Per-kernel "% of peak" figures use these;
  a small kernel can beat them (turbo clocks, a busy machine during the
  measurement), which is why the theoretical bound is shown too.

Reads ``/proc/cpuinfo`` (Linux) and psutil; imports torch only to measure.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path
from typing import Mapping

import psutil

from tvm_shuffle import host

# Flags worth naming in a report, in the order they are shown (x86 /proc/cpuinfo
# "flags", aarch64 "Features").
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")
# fp32 lanes per vector for the widest ISA present, first match wins.
_VECTOR_LANES = (("avx512f", 16), ("avx2", 8), ("avx", 8), ("sve", 4), ("asimd", 4), ("sse2", 4))
_FMA_PIPES = 2
_GEMM_N = 1024  # 4 MiB operands: short calls, so "best of" finds a quiet moment on a shared machine
_COPY_BYTES = 64 << 20  # source and destination each twice a 32 MiB L3: the copy streams from memory


def _cpuinfo(text: str) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as {field: value}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(fields: Mapping[str, str]) -> str:
    """``AMD EPYC``, ``Intel(R) Xeon(R) ...``; ARM boards name only a part number."""
    if "model name" in fields:
        return fields["model name"]
    if "CPU part" in fields:
        return f"ARM part {fields['CPU part']} (implementer {fields.get('CPU implementer', '?')})"
    return platform.processor() or platform.machine()


def isa(flags: set[str]) -> list[str]:
    return [f for f in ISA_FLAGS if f in flags]


def theoretical_gflops(cores: int, mhz: float | None, flags: set[str]) -> float | None:
    """Upper bound on fp32 GFLOP/s: cores x GHz x lanes x 2 (FMA) x two pipes."""
    lanes = next((n for flag, n in _VECTOR_LANES if flag in flags), None)
    if not mhz or lanes is None:
        return None
    return cores * mhz / 1e3 * lanes * 2 * _FMA_PIPES


def describe(threads: int | None = None) -> dict:
    """CPU model, ISA, cores, clock and memory of this machine (no measurement: instant)."""
    path = Path("/proc/cpuinfo")
    fields = _cpuinfo(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else {}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    cores = host.physical_cores()
    mhz = float(fields["cpu MHz"]) if "cpu MHz" in fields else _psutil_mhz()
    return {
        "cpu": cpu_model(fields),
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer") or "",
        "arch": host.arch(),
        "isa": isa(flags),
        "physical_cores": cores,
        "logical_cpus": psutil.cpu_count() or cores,
        "threads": threads or cores,
        "mhz": round(mhz, 1) if mhz else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hostname": platform.node(),
        "virtualized": "hypervisor" in flags,
        "theoretical_gflops": theoretical_gflops(cores, mhz, flags),
    }


def _psutil_mhz() -> float | None:
    freq = psutil.cpu_freq()
    return freq.current if freq and freq.current else None


def measure_peaks(threads: int, *, seconds: float = 1.0) -> dict[str, float]:
    """Measured fp32 GFLOP/s (sgemm) and GB/s (copy, read + write) with ``threads`` threads."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(_GEMM_N, _GEMM_N), torch.randn(_GEMM_N, _GEMM_N)
        gemm = _best_seconds(lambda: torch.mm(a, b), seconds)
        src = torch.empty(_COPY_BYTES // 4)
        dst = torch.empty_like(src)
        copy = _best_seconds(lambda: dst.copy_(src), seconds)
    finally:
        torch.set_num_threads(saved)
    return {"gflops": round(2 * _GEMM_N**3 / gemm / 1e9, 1), "gbps": round(2 * _COPY_BYTES / copy / 1e9, 1)}


def _best_seconds(fn, budget: float) -> float:
    """Fastest of as many calls as fit in ``budget`` seconds (at least three, after one warm-up)."""
    fn()
    best, start, calls = float("inf"), time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < budget:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        calls += 1
    return best


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def tag(info: Mapping) -> str:
    """Short machine name for file names: ``amd-epyc-2c``."""
    cpu = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$", "", info["cpu"].lower())
    cpu = re.sub(r"\b\d+-core\b", "", cpu)
    return f"{slug(cpu)[:40].strip('-')}-{info['physical_cores']}c"


__all__ = ["ISA_FLAGS", "describe", "measure_peaks", "theoretical_gflops", "isa", "cpu_model", "tag", "slug"]
