#!/usr/bin/env python3
"""Run the tvm_shuffle GPU kit: check every bundle against PyTorch on the same GPU, then time them.

    python3 run_gpu.py --out RESULTS     # on the GPU machine: RESULTS/results.json and results.md
    python run_gpu.py --self-check       # anywhere, no GPU: the kit is whole and its PyTorch side runs

Needs Python 3.12 with numpy and PyTorch for CUDA (torch.compile: the Triton
that comes with it). Everything else is in this directory, made by
``benchmarks/gpu/pack.py``: CUDA bundles (compiled kernels, CUDA graphs), the
apache-tvm-ffi wheel that loads them from Python, the bundles' C++ example
app, and the zoo's PyTorch definition and weights (``kit.json`` lists every file).

Engines, per bundle (model x batch), timed in interleaved rounds (each round
times every engine once, in a rotated order) so that all see the same state
of the machine: tvm_shuffle through its Python path (input and output stay on
the GPU) and through its C++ app (``classify``: its times include copying the
input to the GPU and the logits back), PyTorch eager with cuDNN (NCHW and
channels_last) and torch.compile (default, and ``reduce-overhead``: CUDA
graphs). All in fp32: TF32 is off. A call is timed from its start until the
GPU has finished it (``torch.cuda.synchronize``). Each engine's output is
checked against PyTorch eager NCHW on the same input first, and kernel
launches per inference are counted with ``torch.profiler``.

A reduced-precision bundle (``kit.json``'s ``precision``: int8, dp4a
kernels; fp16, tensor-core kernels) is checked against fp32 PyTorch eager by
its relative logit error (the precision's ``tolerance``, carried in
``kit.json``), an int8 bundle also against the same int8 network's x86
build (``expected_x86_int8``), and timed against
PyTorch eager in fp32 and fp16 (NCHW, channels_last) and torch.compile in
fp16 with CUDA graphs (the fp32 torch.compile rows are the fp32 bundle's).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gzip
import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

KIT = Path(__file__).resolve().parent
KIT_JSON = "kit.json"
KDL_CPU, KDL_CUDA = 1, 2
POOLED_ALLOCATOR = 2
TOLERANCE = 1e-3  # atol = rtol on the logits, as tests/test_zoo.py checks the zoo against PyTorch
FP16_TOLERANCE = 1e-2  # relative logit error of PyTorch in fp16 against fp32 (the reduced-precision rows)
DEFAULT_BUDGET_S = 420  # 7 minutes: what is left when it runs out is skipped, and says so
COMPILE_RESERVE_S = 75  # a torch.compile engine starts only with this much of the budget left (or 1.5x the longest so far)
DEFAULT_ROUNDS = 5
ANCHORS = [("shufflenet_v2_x1_0", 1, "TensorRT fp32 on a T4 (mmdeploy)", 1.37)]
NO_GPU_EXIT = 3


class KitError(Exception):
    """The kit is incomplete or damaged, or this machine cannot run it: one line says which."""


def log(message: str) -> None:
    print(f"[run_gpu] {message}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- the kit's files

def read_kit(kit: Path = KIT) -> dict[str, Any]:
    try:
        return json.loads((kit / KIT_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KitError(f"no {KIT_JSON} in {kit}: run_gpu.py runs from the directory pack.py wrote") from None
    except json.JSONDecodeError as err:
        raise KitError(f"{kit / KIT_JSON} is not valid JSON: {err}") from None


def file_problems(kit: Path, info: dict) -> list[str]:
    """Every stored file present with its size and sha256; every shared copy's source stored."""
    problems = []
    for rel, entry in info["files"].items():
        path = kit / rel
        if not path.is_file():
            problems.append(f"missing {rel}")
        elif path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]:
            problems.append(f"{rel} does not match {KIT_JSON} (damaged or replaced)")
    problems += [f"{dest}: its stored copy {src} is not listed" for dest, src in info["copies"].items()
                 if src not in info["files"]]
    problems += [f"{dest}: its compressed copy {entry['stored']} is not listed"
                 for dest, entry in compressed(info).items() if entry["stored"] not in info["files"]]
    return problems


def compressed(info: dict) -> dict[str, dict[str, Any]]:
    """Files the kit stores gzipped: {where it belongs: {"stored", "size", "sha256" of the file itself}} (older kits: none)."""
    return info.get("compressed", {})


def stored_bytes(kit: Path, info: dict, rel: str) -> bytes:
    """The content of the kit's file ``rel``, wherever pack.py stored it (in place, shared under common/, gzipped)."""
    entry = compressed(info).get(rel)
    if entry is not None:
        return gzip.decompress((kit / entry["stored"]).read_bytes())
    return (kit / info["copies"].get(rel, rel)).read_bytes()


def place(kit: Path, info: dict, rel: str, target: Path) -> None:
    """Write the kit's file ``rel`` to ``target`` (a shared or compressed one; checked against its sha256 when gzipped)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    entry = compressed(info).get(rel)
    if entry is None:
        source = kit / info["copies"][rel]
        shutil.copyfile(source, target)
        shutil.copymode(source, target)
        return
    data = stored_bytes(kit, info, rel)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise KitError(f"{entry['stored']} does not decompress to the {rel} that {KIT_JSON} records")
    target.write_bytes(data)


def bundle_problems(kit: Path, info: dict) -> list[str]:
    """Each bundle's own manifest satisfied: every file it lists is stored there or shared, with its sha256."""
    problems = []
    for bundle in info["bundles"]:
        manifest = json.loads((kit / bundle["dir"] / "manifest.json").read_text(encoding="utf-8"))
        for rel, entry in manifest["bundle"]["files"].items():
            where = f"{bundle['dir']}/{rel}"
            stored = info["copies"].get(where, where)
            recorded = compressed(info).get(where) or info["files"].get(stored, {})
            if recorded.get("sha256") != entry["sha256"]:
                problems.append(f"{where} does not match the bundle's manifest.json")
        if manifest["target"]["family"] != "cuda":
            problems.append(f"{bundle['dir']} is a {manifest['target']['family']} bundle, not a CUDA one")
    return problems


def materialize(kit: Path, info: dict) -> None:
    """Put each shared file (stored once under common/) and each gzipped one back where it belongs."""
    sizes = {**{dest: (kit / src).stat().st_size for dest, src in info["copies"].items()},
             **{dest: entry["size"] for dest, entry in compressed(info).items()}}
    for dest, size in sizes.items():
        target = kit / dest
        if not (target.is_file() and target.stat().st_size == size):
            place(kit, info, dest, target)


def device_code(data: bytes) -> dict[str, bool]:
    """A fatbin (0xBA55ED50), no CUDA C source, and the VM's CUDA-graph builtin, read from the bytes of model.so."""
    return {"fatbin": b"\x50\xed\x55\xba" in data, "cuda_source": b"__global__" in data,
            "cuda_graph": b"vm.builtin.cuda_graph.run_or_capture" in data}


# ---------------------------------------------------------------- PyTorch side

def import_torch():
    try:
        import torch
    except ImportError as err:
        raise KitError(f"PyTorch is not installed here ({err}): run_gpu.py needs torch and numpy") from None
    return torch


def zoo_module(kit: Path, info: dict, bundle: dict):
    """The bundle's network in PyTorch: the zoo's definition carried in py/, with the packed weights."""
    import numpy as np

    torch = import_torch()
    if str(kit / info["python_path"]) not in sys.path:
        sys.path.insert(0, str(kit / info["python_path"]))
    models = importlib.import_module("tvm_shuffle.models")
    module = models.build_model(bundle["model"])
    with np.load(kit / bundle["weights"]) as weights:
        module.load_state_dict({name: torch.from_numpy(weights[name]) for name in weights.files}, strict=True)
    if bundle.get("batchnorm_seed") is not None:  # the int8 bundles' network (pack.network)
        models.randomize_batchnorm(module, bundle["batchnorm_seed"])
    return module.eval()


def seeded_input(shape: Sequence[int], seed: int):
    """The input every engine is checked on; pack.py stored PyTorch's CPU logits on the same one."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype("float32")


def compare(output, reference, relative: float | None = None) -> dict[str, Any]:
    """Max abs error, relative error, top-1 agreement, and whether ``output`` is close to ``reference`` (numpy).

    Close: within TOLERANCE (atol = rtol) with the same top-1, or, given
    ``relative`` (a reduced precision's tolerance), a relative logit error
    ``|output - reference| / |reference|`` (2-norms) of at most that.
    """
    import numpy as np

    output, reference = np.asarray(output, dtype="float32"), np.asarray(reference, dtype="float32")
    if output.shape != reference.shape:
        return {"ok": False, "reason": f"shape {output.shape} != {reference.shape}"}
    top1 = float((output.argmax(-1) == reference.argmax(-1)).mean())
    rel_err = float(np.linalg.norm(output - reference) / max(float(np.linalg.norm(reference)), 1e-30))
    ok = (rel_err <= relative if relative is not None
          else bool(np.allclose(output, reference, atol=TOLERANCE, rtol=TOLERANCE)) and top1 == 1.0)
    return {"ok": bool(ok), "max_abs_err": float(np.abs(output - reference).max()), "rel_err": rel_err,
            "top1_agreement": top1, **({"tolerance": relative} if relative is not None else {})}


def reduced_precision(bundle: dict) -> dict | None:
    """The bundle's precision (name, mode, tolerance) when it is not fp32 (older kits: none)."""
    precision = bundle.get("precision")
    return precision if precision and precision.get("name", "fp32") != "fp32" else None


# ---------------------------------------------------------------- tvm_shuffle's Python path

def import_tvm_ffi(kit: Path, info: dict, scratch: Path):
    """``tvm_ffi`` from the kit's cp312 wheel, unzipped into ``scratch`` (no pip, no network).

    Its optional torch add-on would JIT-compile a C++ extension on import;
    it is switched off: tensors cross with the standard DLPack protocol.
    """
    wheel = kit / info["ffi_wheel"]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if f"-{tag}-" not in wheel.name:
        raise KitError(f"the kit's {wheel.name} is for another Python than this {platform.python_version()}")
    target = scratch / "pydeps"
    if not (target / "tvm_ffi").is_dir():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
        for lib in (target / "tvm_ffi").rglob("*.so"):
            lib.chmod(0o755)
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    sys.path.insert(0, str(target))
    import tvm_ffi

    return tvm_ffi


_RUNTIME_LOADED: list[Path] = []


class TvmBundle:
    """A bundle on its device (GPU 0 for a CUDA one), called with a torch tensor there; returns its first output.

    What the bundle's C++ header does (``include/tvm_shuffle.h``): load the
    runtime libraries the manifest lists, ``vm_load_executable``, then
    ``vm_initialization`` with (kDLCUDA, 0, pooled allocator) for the kernels
    and (kDLCPU, 0, pooled) for the host. Tensors cross by DLPack, without copies.
    """

    def __init__(self, tvm_ffi, directory: Path):
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        if not _RUNTIME_LOADED:  # the same libraries in every bundle: loaded once per process
            for rel in manifest["bundle"]["runtime_libraries"]:
                try:
                    ctypes.CDLL(str(directory / rel), ctypes.RTLD_GLOBAL)
                except OSError as err:
                    raise KitError(f"cannot load {directory / rel}: {err}") from None
                _RUNTIME_LOADED.append(directory / rel)
        module = tvm_ffi.load_module(str(directory / manifest["library"]))
        self._vm = module["vm_load_executable"]()
        device = KDL_CUDA if manifest["target"]["family"] == "cuda" else KDL_CPU
        self._vm["vm_initialization"](device, 0, POOLED_ALLOCATOR, KDL_CPU, 0, POOLED_ALLOCATOR)
        self._main = self._vm["main"]
        self._from_dlpack = tvm_ffi.from_dlpack

    def __call__(self, x):
        import torch

        result = self._main(self._from_dlpack(x))
        outputs = [result] if hasattr(result, "__dlpack__") else list(result)
        return torch.from_dlpack(outputs[0])


# ---------------------------------------------------------------- the C++ app

def app_path(kit: Path, info: dict, scratch: Path) -> tuple[Path | None, str]:
    """The kit's ``classify`` if it starts here, else one built here with g++ from a bundle's sources."""
    app = kit / info["app"]["path"]
    done = subprocess.run([str(app)], capture_output=True, text=True)
    if done.returncode == 2 and "usage" in done.stderr:
        return app, "built by pack.py"
    why = (done.stderr.strip().splitlines() or ["no output"])[0]
    bundle = kit / info["bundles"][0]["dir"]
    rebuilt = scratch / "app" / "classify"
    rebuilt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(bundle / "lib" / "libtvm_ffi.so", rebuilt.parent / "libtvm_ffi.so")
    command = ["g++", "-std=c++17", "-O2", str(bundle / "example" / "main.cc"), "-I", str(bundle / "include"),
               "-I", str(bundle / "example"), "-L", str(rebuilt.parent), "-ltvm_ffi", "-ldl",
               "-Wl,-rpath,$ORIGIN", "-o", str(rebuilt)]
    built = subprocess.run(command, capture_output=True, text=True) if shutil.which("g++") else None
    if built is None or built.returncode != 0:
        return None, f"the kit's app does not start here ({why}) and g++ could not rebuild it"
    return rebuilt, f"rebuilt here with g++: the kit's app did not start ({why})"


def run_app(app: Path, bundle: Path, x_bin: Path, repeat: int, dump: Path | None = None) -> float:
    """One run of ``classify`` (3 warm-up runs, then ``repeat`` timed ones); its median in ms."""
    command = [str(app), str(bundle), str(x_bin), "--repeat", str(repeat), *(["--dump", str(dump)] if dump else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise KitError((done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
    found = re.search(r"latency: median ([\d.]+) ms", done.stdout)
    if found is None:
        raise KitError(f"classify printed no latency: {done.stdout.strip()[-200:]}")
    return float(found.group(1))


# ---------------------------------------------------------------- timing

def sync_time(fn: Callable[[], Any], torch) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def repeat_for(batch: int) -> int:
    """Timed calls per engine per round: fewer for large batches (each call is longer)."""
    return 50 if batch == 1 else 10


def count_launches(fn: Callable[[], Any], torch, runs: int = 3) -> dict[str, float] | None:
    """Kernels run on the GPU and launch calls made on the CPU (kernel and graph launches) per inference."""
    from torch.profiler import ProfilerActivity, profile

    try:
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(runs):
                fn()
            torch.cuda.synchronize()
        events = list(prof.events())
    except Exception as err:  # a profiler without CUPTI: say so, keep the timings
        log(f"profiler failed: {str(err).splitlines()[0][:200]}")
        return None
    gpu = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")
           and not e.name.startswith(("Memcpy", "Memset", "memcpy", "memset"))]
    launches = [e for e in events if re.fullmatch(r"cu(da)?(LaunchKernel\w*|GraphLaunch\w*)", e.name)]
    return {"gpu_kernels": len(gpu) / runs, "launch_calls": len(launches) / runs}


class Engine:
    """One way of running a bundle's network: ``call()`` runs one inference on the seeded input, on the GPU."""

    def __init__(self, name: str, call: Callable[[], Any] | None = None, *, timed: Callable[[int], float] | None = None,
                 note: str = "", tolerance: float | None = None):
        self.name, self.call, self._timed, self.note = name, call, timed, note
        self.tolerance = tolerance  # relative logit error allowed against fp32 (reduced precisions); None: TOLERANCE
        self.rounds: list[float] = []
        self.check: dict[str, Any] | None = None
        self.launches: dict[str, float] | None = None

    def round_ms(self, repeat: int, torch) -> float:
        if self._timed is not None:
            return self._timed(repeat)
        return statistics.median(sync_time(self.call, torch) for _ in range(repeat))


def torch_engines(module, x, torch, deadline: float, fp16: bool = False) -> tuple[list[Engine], list[dict]]:
    """PyTorch eager (NCHW, channels_last) and torch.compile (default, reduce-overhead) on ``x``; skipped ones listed.

    ``fp16`` (the reduced-precision bundles' rows): eager in fp32 and fp16,
    and torch.compile in fp16 with CUDA graphs only.
    """
    engines, skipped = [], []
    eager = module.cuda()
    engines.append(Engine("pytorch eager (cuDNN, NCHW)", lambda: eager(x)))
    last = _copy_module(module).to(memory_format=torch.channels_last).cuda()
    x_last = x.contiguous(memory_format=torch.channels_last)
    engines.append(Engine("pytorch eager (cuDNN, channels_last)", lambda: last(x_last)))
    compiles = [(None, "torch.compile (default)", module, x, None),
                ("reduce-overhead", "torch.compile (reduce-overhead: CUDA graphs)", module, x, None)]
    if fp16:
        half, x_half = _copy_module(module).half().cuda(), x.half()
        engines.append(Engine("pytorch eager fp16 (cuDNN, NCHW)", lambda: half(x_half), tolerance=FP16_TOLERANCE))
        half_last = _copy_module(module).half().to(memory_format=torch.channels_last).cuda()
        x_half_last = x_half.contiguous(memory_format=torch.channels_last)
        engines.append(Engine("pytorch eager fp16 (cuDNN, channels_last)", lambda: half_last(x_half_last),
                              tolerance=FP16_TOLERANCE))
        compiles = [("reduce-overhead", "torch.compile fp16 (reduce-overhead: CUDA graphs)", _copy_module(module).half(),
                     x_half, FP16_TOLERANCE)]
    for mode, name, source, inputs, tolerance in compiles:
        if time.monotonic() > deadline - max(COMPILE_RESERVE_S, 1.5 * max(_COMPILE_SECONDS, default=0)):
            skipped.append({"engine": name, "reason": "skipped: too little of the time budget left (--budget-s)"})
            continue
        try:
            start = time.perf_counter()
            compiled = torch.compile(_copy_module(source).cuda(), mode=mode)
            for _ in range(3):  # compile, then the warm-up runs reduce-overhead records its graphs in
                compiled(inputs)
            torch.cuda.synchronize()
            _COMPILE_SECONDS.append(time.perf_counter() - start)
            engines.append(Engine(name, lambda c=compiled, i=inputs: c(i), tolerance=tolerance,
                                  note=f"compiled in {_COMPILE_SECONDS[-1]:.0f} s"))
        except Exception as err:  # a failing compiler is a row, not the end of the run
            skipped.append({"engine": name, "reason": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"})
    return engines, skipped


_COMPILE_SECONDS: list[float] = []  # every torch.compile of this run, so that the next one is not started too late


def _copy_module(module):
    import copy

    return copy.deepcopy(module)


def time_rounds(engines: Sequence[Engine], rounds: int, repeat: int, torch) -> None:
    """Each round times every engine once (``repeat`` calls, their median), the order rotated per round."""
    for r in range(rounds):
        order = list(engines[r % len(engines):]) + list(engines[:r % len(engines)])
        for engine in order:
            try:
                engine.rounds.append(engine.round_ms(repeat, torch))
            except Exception as err:
                engine.note = f"failed in round {r}: {str(err).splitlines()[0][:200]}"
                log(f"{engine.name}: {engine.note}")


# ---------------------------------------------------------------- one bundle

def run_bundle(kit: Path, info: dict, bundle: dict, *, tvm_ffi, app: Path | None, scratch: Path, rounds: int,
               deadline: float, torch) -> dict[str, Any]:
    """Check and time every engine on one bundle; a dict for results.json."""
    import numpy as np

    directory = kit / bundle["dir"]
    shape = bundle["input_shape"]
    x_np = seeded_input(shape, info["input_seed"])
    x = torch.from_numpy(x_np).cuda()
    module = zoo_module(kit, info, bundle)
    with torch.no_grad():
        reference = module.cuda()(x).float().cpu().numpy()
    precision = reduced_precision(bundle)
    tolerance = precision["tolerance"] if precision else None
    label = f" {precision['name']}" if precision else ""
    row: dict[str, Any] = {"bundle": bundle["name"], "model": bundle["model"], "batch": bundle["batch"],
                           "input_shape": shape, "schedules": bundle["schedules"],
                           "launch_plan": bundle["launch_plan"], "skipped": [],
                           "reference_vs_kit_cpu": compare(reference, np.load(kit / bundle["expected"]))}
    if precision:
        row["precision"] = precision
    x86 = np.load(kit / bundle["expected_x86_int8"]) if bundle.get("expected_x86_int8") else None
    engines: list[Engine] = []
    if tvm_ffi is not None:
        try:
            model = TvmBundle(tvm_ffi, directory)
            engines.append(Engine(f"tvm_shuffle{label} (Python, CUDA graph)", lambda: model(x), tolerance=tolerance))
        except Exception as err:
            row["skipped"].append({"engine": f"tvm_shuffle{label} (Python, CUDA graph)",
                                   "reason": f"failed to load: {str(err).splitlines()[0][:200]}"})
    if app is not None:
        x_bin = scratch / f"{bundle['name']}_x.bin"
        x_np.tofile(x_bin)
        dump = scratch / f"{bundle['name']}_y.bin"
        try:
            run_app(app, directory, x_bin, 1, dump)
            engine = Engine(f"tvm_shuffle{label} (C++ app, with host copies)",
                            timed=lambda repeat: run_app(app, directory, x_bin, repeat), tolerance=tolerance)
            output = np.fromfile(dump, "float32").reshape(reference.shape)
            engine.check = _check(output, reference, tolerance, x86)
            engine.launches = {"static": bundle["launch_plan"]}
            engines.append(engine)
        except Exception as err:
            row["skipped"].append({"engine": f"tvm_shuffle{label} (C++ app)", "reason": f"failed: {str(err)[:200]}"})
    with torch.no_grad():
        found, skipped = torch_engines(module, x, torch, deadline, fp16=precision is not None)
        engines += found
        row["skipped"] += skipped
        for engine in engines:
            if engine.call is None:
                continue
            try:
                output = engine.call().float().cpu().numpy()
                engine.check = _check(output, reference, engine.tolerance,
                                      x86 if engine.name.startswith("tvm_shuffle") else None)
                engine.launches = count_launches(engine.call, torch)
            except Exception as err:
                engine.note = f"failed: {str(err).splitlines()[0][:200]}"
        repeat = repeat_for(bundle["batch"])
        log(f"{bundle['name']}: timing {len(engines)} engines, {rounds} rounds x {repeat} calls")
        time_rounds([e for e in engines if not e.note.startswith("failed")], rounds, repeat, torch)
    baseline = next((e for e in engines if e.name.startswith("pytorch eager (cuDNN, NCHW)") and e.rounds), None)
    row["engines"] = [_engine_row(e, baseline) for e in engines]
    return row


def _check(output, reference, tolerance: float | None, x86_int8=None) -> dict[str, Any]:
    """:func:`compare` against fp32 PyTorch; with the int8 network's x86 logits, the error against them too."""
    check = compare(output, reference, tolerance)
    if x86_int8 is not None:
        check["vs_x86_int8"] = {k: v for k, v in compare(output, x86_int8, tolerance).items() if k != "ok"}
    return check


def _engine_row(engine: Engine, baseline: Engine | None) -> dict[str, Any]:
    row = {"engine": engine.name, "rounds_ms": [round(v, 4) for v in engine.rounds], "check": engine.check,
           "launches": engine.launches, "note": engine.note}
    if engine.rounds:
        row["median_ms"] = round(statistics.median(engine.rounds), 4)
        if baseline is not None and len(baseline.rounds) == len(engine.rounds):
            ratios = [b / e for b, e in zip(baseline.rounds, engine.rounds)]
            row["speedup_vs_eager"] = round(statistics.median(ratios), 3)
            row["speedup_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return row


# ---------------------------------------------------------------- results

def machine(torch) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    driver = None
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        driver = out.splitlines()[0] if out else None
    return {"gpu": props.name, "compute_capability": f"sm_{props.major}{props.minor}", "sms": props.multi_processor_count,
            "memory_gb": round(props.total_memory / 2**30, 1), "driver": driver, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "host": platform.node(), "cpu": platform.processor() or platform.machine()}


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _launch_cells(launches: dict | None) -> tuple[float | None, float | None]:
    """(kernels on the GPU, launch calls) per inference: measured by the profiler, else the bundle's bytecode."""
    if not launches:
        return None, None
    if "static" in launches:
        plan = launches["static"]
        return plan["kernels_outside_graphs"] + plan["kernels_in_graphs"], plan["launches_per_inference"]
    return launches.get("gpu_kernels"), launches.get("launch_calls")


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# tvm_shuffle on {m['gpu']} ({m['compute_capability']}, {m['sms']} SMs)", "",
             f"{results['finished_at']}; torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, driver "
             f"{m['driver']}; kit built {results['kit']['built_at']} for {results['kit']['target']} with TVM "
             f"{results['kit']['tvm']}. fp32 everywhere (TF32 off), the input on the GPU (the C++ app copies it "
             f"there and the logits back on every call), {results['rounds']} interleaved rounds; a cell is the "
             "median over rounds of each round's median; speed-ups against PyTorch eager NCHW, [lowest, highest] "
             "over the rounds. Kernels: run on the GPU per inference (torch.profiler); launches: kernel and "
             "graph launch calls the CPU makes per inference.", ""]
    for row in results["bundles"]:
        plan = row["launch_plan"]
        precision = row.get("precision")
        lines += [f"## {row['model']}, batch {row['batch']} ({'x'.join(map(str, row['input_shape']))}), "
                  + (f"{precision['name']} ({precision.get('mode')}), " if precision else "")
                  + f"tvm_shuffle {row['schedules']}", "",
                  f"tvm_shuffle's bytecode launches {plan['kernels_outside_graphs']} kernels and "
                  f"{plan['graph_launches']} CUDA graph ({plan['kernels_in_graphs']} kernels) per inference. "
                  f"PyTorch here against the kit's CPU logits: max abs err "
                  f"{_fmt(row['reference_vs_kit_cpu'].get('max_abs_err'), 6)}.", ""]
        if precision:
            calibrated = "calibration" in precision
            lines += [f"{precision['name']} with BatchNorm randomized"
                      + (", calibrated on the synthetic set" if calibrated else "") + "; checked "
                      f"against fp32 PyTorch eager: relative logit error at most {precision['tolerance']:g} (fp16 "
                      f"PyTorch: {FP16_TOLERANCE:g})"
                      + ("; 'vs x86 int8': against the same int8 network built for the CPU (rounding of the fp32 "
                         "kernels only)" if calibrated else "") + ".", ""]
        lines += ["| engine | ms | speed-up | kernels | launches | max abs err | top-1 | rel err | vs x86 int8 | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for e in row["engines"]:
            check = e.get("check") or {}
            speedup = (f"{e['speedup_vs_eager']:.2f}x [{e['speedup_range'][0]:.2f}, {e['speedup_range'][1]:.2f}]"
                       if "speedup_vs_eager" in e else "–")
            kernels, calls = _launch_cells(e.get("launches"))
            lines.append(f"| {e['engine']} | {_fmt(e.get('median_ms'))} | {speedup} | {_fmt(kernels, 0)} | "
                         f"{_fmt(calls, 0)} | {_fmt(check.get('max_abs_err'), 6)} | {_fmt(check.get('top1_agreement'), 2)} | "
                         f"{_fmt(check.get('rel_err'), 6)} | {_fmt((check.get('vs_x86_int8') or {}).get('rel_err'), 6)} | "
                         f"{'' if check.get('ok', True) else 'OUTPUT MISMATCH; '}{e.get('note') or ''} |")
        lines += [f"| {s['engine']} | – | – | – | – | – | – | – | – | {s['reason']} |" for s in row["skipped"]]
        for model, batch, what, ms in ANCHORS:
            if (row["model"], row["batch"]) == (model, batch):
                lines += ["", f"Anchor: {what}, {ms} ms."]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- self-check (no GPU)

def self_check(kit: Path = KIT) -> int:
    """Check the kit on this machine without a GPU; prints one line per check."""
    failures = 0

    def report(name: str, problem: str | None) -> None:
        nonlocal failures
        failures += problem is not None
        print(f"{'ok  ' if problem is None else 'FAIL'} {name}{'' if problem is None else ': ' + problem}", flush=True)

    try:
        info = read_kit(kit)
    except KitError as err:
        report(KIT_JSON, str(err))
        return 1
    problems = file_problems(kit, info)
    report(f"{len(info['files'])} files match {KIT_JSON}", "; ".join(problems[:3]) or None)
    problems = bundle_problems(kit, info) if not problems else ["skipped: files damaged"]
    report(f"{len(info['bundles'])} bundles' manifests are satisfied", "; ".join(problems[:3]) or None)
    for bundle in info["bundles"]:
        code = device_code(stored_bytes(kit, info, f"{bundle['dir']}/model.so"))
        bad = [w for w, b in (("no fatbin", not code["fatbin"]), ("CUDA source", code["cuda_source"]),
                              ("no CUDA graph", not code["cuda_graph"] and info.get("cuda_graphs"))) if b]
        report(f"{bundle['name']}: device code (fatbin), CUDA graph", ", ".join(bad) or None)
    report("argument handling", _check_arguments())
    with zipfile.ZipFile(kit / info["ffi_wheel"]) as zf:
        names = zf.namelist()
        bad = zf.testzip()
    missing = [p for p in ("tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/core.cpython-312-x86_64-linux-gnu.so") if p not in names]
    report(f"{Path(info['ffi_wheel']).name} (apache-tvm-ffi {info['tvm_ffi']} for CPython 3.12)",
           f"damaged member {bad}" if bad else (f"lacks {', '.join(missing)}" if missing else None))
    with tempfile.TemporaryDirectory(prefix="kit_check_") as scratch:
        report("C++ app starts and reads a bundle up to the GPU driver", _check_app(kit, info, Path(scratch)))
    try:
        torch = import_torch()
        import numpy as np  # noqa: F401
    except (KitError, ImportError) as err:
        report("imports (numpy, torch)", str(err))
        return 1
    report(f"imports (numpy, torch {torch.__version__}, the kit's tvm_shuffle.models)", None)
    for bundle in info["bundles"]:
        report(f"{bundle['name']}: PyTorch on the CPU (NCHW, channels_last) matches the kit's logits",
               _check_torch_cpu(kit, info, bundle, torch))
    print(f"self-check FAILED: {failures} checks failed" if failures else "self-check passed", flush=True)
    return 1 if failures else 0


def _check_arguments() -> str | None:
    parser = build_parser()
    try:
        args = parser.parse_args(["--out", "RESULTS", "--rounds", "3", "--budget-s", "300"])
    except SystemExit:
        return "the documented flags do not parse"
    if (args.out, args.rounds, args.budget_s, args.self_check) != (Path("RESULTS"), 3, 300, False):
        return f"parsed {args}"
    return None


def _check_app(kit: Path, info: dict, scratch: Path) -> str | None:
    """The app runs (usage, exit 2) and takes a bundle as far as loading the CUDA runtime, which needs a driver."""
    app_dir = scratch / "app"
    app_dir.mkdir()
    for rel in ("app/classify", "app/libtvm_ffi.so"):
        source = kit / info["copies"].get(rel, rel)
        shutil.copy2(source, app_dir / Path(rel).name)
    done = subprocess.run([str(app_dir / "classify")], capture_output=True, text=True)
    if done.returncode != 2 or "usage" not in done.stderr:
        return f"classify does not start: {(done.stderr.strip().splitlines() or ['exit %d' % done.returncode])[0]}"
    bundle = min(info["bundles"], key=lambda b: b["batch"])
    copy = scratch / "bundle"
    shutil.copytree(kit / bundle["dir"], copy)
    prefix = f"{bundle['dir']}/"
    for dest in [*info["copies"], *compressed(info)]:
        if dest.startswith(prefix):
            place(kit, info, dest, copy / dest[len(prefix):])
    x_bin = scratch / "x.bin"
    seeded_input(bundle["input_shape"], info["input_seed"]).tofile(x_bin)
    done = subprocess.run([str(app_dir / "classify"), str(copy), str(x_bin), "--repeat", "1"],
                          capture_output=True, text=True)
    message = done.stderr.strip()
    if done.returncode == 0 or "libcuda.so" in message:
        return None  # ran on a GPU, or stopped at the driver: the manifest, checksums and runtime files are good
    return f"stopped before the driver: {message.splitlines()[-1] if message else 'exit %d' % done.returncode}"


def _check_torch_cpu(kit: Path, info: dict, bundle: dict, torch) -> str | None:
    import numpy as np

    module = zoo_module(kit, info, bundle)
    x = torch.from_numpy(seeded_input(bundle["input_shape"], info["input_seed"]))
    expected = np.load(kit / bundle["expected"])
    with torch.no_grad():
        outputs = {"NCHW": module(x).numpy(),
                   "channels_last": module.to(memory_format=torch.channels_last)(
                       x.contiguous(memory_format=torch.channels_last)).numpy()}
    bad = [f"{layout}: max abs err {compare(out, expected).get('max_abs_err')}"
           for layout, out in outputs.items() if not compare(out, expected)["ok"]]
    return "; ".join(bad) or None


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, metavar="RESULTS", help="where results.json and results.md go")
    parser.add_argument("--self-check", action="store_true", help="check the kit here, without a GPU")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"interleaved rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds of work before what is left is skipped (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--bundles", metavar="NAMES", help="comma-separated bundle names (default: all, in kit order)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_check:
        return self_check(KIT)
    if args.out is None:
        parser.error("--out RESULTS is required (or --self-check)")
    if args.rounds < 1 or args.budget_s <= 0:
        parser.error("--rounds and --budget-s must be positive")
    try:
        return run(args)
    except KitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    deadline = start + args.budget_s
    torch = import_torch()
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False): run_gpu.py times on a GPU; "
              "--self-check checks the kit without one", file=sys.stderr)
        return NO_GPU_EXIT
    info = read_kit(KIT)
    problems = file_problems(KIT, info)
    if problems:
        raise KitError(f"the kit is damaged: {'; '.join(problems[:3])}")
    materialize(KIT, info)
    problems = bundle_problems(KIT, info)
    if problems:
        raise KitError(f"the kit's bundles are incomplete: {'; '.join(problems[:3])}")
    bundles = info["bundles"]
    if args.bundles:
        wanted = args.bundles.split(",")
        unknown = sorted(set(wanted) - {b["name"] for b in bundles})
        if unknown:
            raise KitError(f"unknown bundle(s) {', '.join(unknown)}; the kit has {', '.join(b['name'] for b in bundles)}")
        bundles = [b for b in bundles if b["name"] in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    results: dict[str, Any] = {"machine": machine(torch), "kit": {k: info[k] for k in ("built_at", "target", "arch", "tvm", "tvm_ffi")},
                               "rounds": args.rounds, "budget_s": args.budget_s, "bundles": [], "not_run": []}
    log(f"{results['machine']['gpu']}, torch {torch.__version__}; {len(bundles)} bundles, budget {args.budget_s:.0f} s")
    with tempfile.TemporaryDirectory(prefix="run_gpu_") as tmp:
        scratch = Path(tmp)
        try:
            tvm_ffi = import_tvm_ffi(KIT, info, scratch)
        except (KitError, ImportError, OSError) as err:
            tvm_ffi = None
            results["tvm_python"] = f"unavailable: {err}"
            log(f"tvm_shuffle's Python path is unavailable: {err}")
        app, results["app"] = app_path(KIT, info, scratch)
        for bundle in bundles:
            if time.monotonic() > deadline:
                results["not_run"].append({"bundle": bundle["name"], "reason": "time budget (--budget-s) spent"})
                continue
            log(f"{bundle['name']} ({time.monotonic() - start:.0f} s in)")
            results["bundles"].append(run_bundle(KIT, info, bundle, tvm_ffi=tvm_ffi, app=app, scratch=scratch,
                                                 rounds=args.rounds, deadline=deadline, torch=torch))
            _write(args.out, results)  # what is done so far survives a crash or a cut-off
    results["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results["wall_s"] = round(time.monotonic() - start, 1)
    _write(args.out, results)
    mismatches = [f"{r['bundle']}: {e['engine']}" for r in results["bundles"] for e in r["engines"]
                  if e.get("check") and not e["check"]["ok"]]
    print(f"wrote {args.out / 'results.json'} and results.md in {results['wall_s']:.0f} s"
          + (f"; OUTPUT MISMATCH: {', '.join(mismatches)}" if mismatches else ""))
    return 1 if mismatches else 0


def _write(out: Path, results: dict) -> None:
    results.setdefault("finished_at", "(running)")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    if results["finished_at"] == "(running)":
        del results["finished_at"]


if __name__ == "__main__":
    raise SystemExit(main())
