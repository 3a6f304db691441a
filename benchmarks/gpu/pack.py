"""Build the GPU benchmark kit on this machine (no GPU needed), for one short run on a GPU machine.

    python benchmarks/gpu/pack.py --out benchmarks/gpu/kit [--arch sm_90]   # here
    python3 benchmarks/gpu/kit/run_gpu.py --out RESULTS                     # there (see README.md)

The GPU machine has PyTorch, numpy and nvcc, but no TVM and no network, and
what travels there is limited (64 MiB): the kit carries everything else, in
at most ``--max-mb`` (60) MB:

* ``bundles/<model>_b<batch>/``: CUDA bundles (device code, CUDA graphs) of
  each model at each batch, tuned where the work directory holds CUDA
  records for it, else the default schedules (``kit.json`` says which);
* ``bundles/<model>_b<batch>_int8/``: the ``--int8`` models (default
  ShuffleNetV2 1.0x at batch 1) built with ``precision="int8"`` (dp4a
  kernels), calibrated on the synthetic set, from the zoo network with
  randomized BatchNorm (``models.randomize_batchnorm``, seed ``BN_SEED``:
  the zoo's untrained logits barely depend on the convolutions, so int8
  error would not show), with ``expected/<bundle>.x86_int8.npy``, the same
  int8 network's logits from its x86 build here;
* ``bundles/<model>_b<batch>_fp16/``: the ``--fp16`` models (default
  ShuffleNetV2 1.0x at batch 1) built with ``precision="fp16"`` (1x1
  convolutions on tensor cores), from the same randomized network;
* ``weights/<model>.npz`` and ``py/tvm_shuffle/models.py``: the same network
  for PyTorch, with ``expected/<bundle>.npy``, its CPU logits on the seeded
  input, to check the weights arrive whole;
* ``wheels/``: the apache-tvm-ffi wheel for CPython 3.12 (the Python path
  loads the bundles with it and the bundles' own ``lib/``);
* ``app/classify``: the bundles' C++ example app, built here;
* ``run_gpu.py``: the runner, and ``kit.json``: every file's size and sha256.

Files that several bundles share (the runtime libraries, headers, examples)
are stored once under ``common/``, and each bundle's ``model.so`` is stored
gzipped (``model.so.gz``); ``run_gpu.py`` puts them back into place before
it runs. ``pack.py`` ends by running ``run_gpu.py --self-check``.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from tvm_shuffle.bundle_format import sha256
from tvm_shuffle.errors import UserError, cli_entry

HERE = Path(__file__).resolve().parent
KIT_JSON = "kit.json"
KIT_VERSION = 1
MODELS = ("shufflenet_v2_x1_0", "shufflenet_v2_x0_5")
BATCHES = (1, 64)
INPUT_SEED = 0
INT8_BUNDLES = "shufflenet_v2_x1_0:1"  # --int8 default: MODEL:BATCH pairs also built in int8
FP16_BUNDLES = "shufflenet_v2_x1_0:1"  # --fp16 default: MODEL:BATCH pairs also built in fp16 (tensor cores)
BN_SEED = 0  # models.randomize_batchnorm's seed for the reduced-precision bundles' network (run_gpu.py applies the same)
# 64 MiB (67.1 MB) travel to the GPU machine in all, the repository's own files (1.5 MB) included.
MAX_MB = 62.5
# The zoo's PyTorch definition and what it imports: pure torch, copied into the kit as they are.
MODEL_SOURCES = ("__init__.py", "models.py", "defaults.py", "errors.py")
FFI_DIST = "apache-tvm-ffi"
WHEEL_PLATFORM = "manylinux_2_28_x86_64"
WHEEL_PYTHON = "3.12"  # the GPU machine's Python


def log(message: str) -> None:
    print(f"[pack] {message}", file=sys.stderr, flush=True)


def bundle_name(model: str, batch: int, precision: str = "fp32") -> str:
    return f"{model}_b{batch}" + ("" if precision == "fp32" else f"_{precision}")


def parse_pairs(option: str, text: str) -> tuple[tuple[str, int], ...]:
    """``--int8`` / ``--fp16``: comma-separated MODEL:BATCH pairs, or ``none``."""
    if text.strip().lower() == "none":
        return ()
    pairs = []
    for item in text.split(","):
        model, _, batch = item.partition(":")
        if not model or not batch.isdigit() or int(batch) <= 0:
            raise UserError(f"{option} {text!r}: each item is MODEL:BATCH (e.g. shufflenet_v2_x1_0:1), or none")
        pairs.append((model, int(batch)))
    return tuple(pairs)


def network(model: str, randomized_bn: bool):
    """The zoo network with its seeded weights; BatchNorm randomized (seed ``BN_SEED``) for the reduced-precision bundles."""
    from tvm_shuffle import models

    module = models.build_model(model)
    return models.randomize_batchnorm(module, BN_SEED) if randomized_bn else module


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise UserError(f"--batches {text!r} is not a comma-separated list of integers, e.g. 1,64") from None
    if not batches or min(batches) <= 0:
        raise UserError(f"--batches {text!r} must be positive integers")
    return batches


# ---------------------------------------------------------------- the one build function

def build_bundle(model: str, spec, input_shape: Sequence[int], out_dir: Path, work_dir: Path | None,
                 precision: str = "fp32") -> tuple[str, dict[str, Any]]:
    """Build ``model`` for ``spec`` and save its bundle to ``out_dir``; returns how it was scheduled, and its manifest.

    Tuned when ``work_dir`` holds CUDA records for this model, target and
    input shape, else TVM's and tvm_shuffle's default GPU schedules. int8
    and fp16: the network of :func:`network` with randomized BatchNorm; int8
    calibrated on the synthetic set (``quantize.load_calibration(None, ...)``).
    """
    import warnings

    import tvm_shuffle as ts
    from tvm_shuffle.errors import MissingRecords

    source = model if precision == "fp32" else network(model, randomized_bn=True)
    options = {"input_shape": input_shape, "quiet": True, "precision": precision}
    compiled, label = None, "default schedules"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no calibration set: the synthetic one, as intended (kit.json says so)
        if work_dir is not None:
            try:
                compiled = ts.compile(source, spec, work_dir=work_dir, **options)
                label = f"tuned ({compiled.records['trials']} trials in {compiled.records['database']})"
            except MissingRecords:
                compiled = None
        if compiled is None:
            compiled = ts.compile(source, spec, **options)
    compiled.save(out_dir)
    return label, compiled.manifest


def plan(models: Sequence[str], batches: Sequence[int],
         reduced: dict[str, Sequence[tuple[str, int]]]) -> list[tuple[str, int, str]]:
    """(model, batch, precision) of every bundle, in the order run_gpu.py runs them.

    ``reduced``: precision -> the (model, batch) pairs also built in it. A
    reduced-precision bundle comes right after the fp32 bundle of its model
    and batch, in ``reduced``'s order (a short run reaches them before the
    batch-64 ones), else at the end.
    """
    bundles = [(model, batch, "fp32") for model in models for batch in batches]
    for precision, pairs in reversed(list(reduced.items())):
        for model, batch in pairs:
            after = (model, batch, "fp32")
            at = bundles.index(after) + 1 if after in bundles else len(bundles)
            bundles.insert(at, (model, batch, precision))
    return bundles


# ---------------------------------------------------------------- what the bundles hold

def launch_plan(library: Path) -> dict[str, int]:
    """What one inference launches, read from the VM bytecode of a CUDA ``model.so``.

    Kernels ``main`` launches itself, CUDA graph launches, and the kernels the
    captured graphs hold (RewriteCUDAGraph captures everything between the
    input's first reader and the output's writer).
    """
    from tvm_shuffle import cuda_codegen

    cuda_codegen.enable_device_code()  # loads TVM's CUDA module loader (a stub driver without a GPU)
    from tvm_shuffle.tvm_compat import tvm

    return parse_launch_plan(tvm.runtime.load_module(str(library))["as_text"]())


def parse_launch_plan(text: str) -> dict[str, int]:
    """:func:`launch_plan` on the VM executable's text (``as_text``)."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^@([\w.]+):$", line)
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif current is not None and line.strip().startswith("call"):
            current.append(line)

    def kernels(name: str) -> int:
        callees = (re.match(r"\s*call\s+(\S+)", line).group(1) for line in bodies.get(name, []))
        return sum(1 for c in callees if c not in bodies and not c.startswith("vm."))

    graphs = [re.search(r"f\[([\w.]+)\]", line).group(1) for line in bodies.get("main", [])
              if "vm.builtin.cuda_graph.run_or_capture" in line]
    outside = kernels("main")
    return {"kernels_outside_graphs": outside, "graph_launches": len(graphs),
            "kernels_in_graphs": sum(kernels(g) for g in graphs), "launches_per_inference": outside + len(graphs)}


def device_code(library: Path) -> dict[str, bool]:
    """Does a CUDA ``model.so`` hold compiled device code (a fatbin, no CUDA C source) and the CUDA-graph builtins?"""
    from tvm_shuffle import cuda_codegen

    data = library.read_bytes()
    return {"fatbin": cuda_codegen.FATBIN_MAGIC in data, "cuda_source": b"__global__" in data,
            "cuda_graph": b"vm.builtin.cuda_graph.run_or_capture" in data}


# ---------------------------------------------------------------- PyTorch side

def save_weights(model: str, path: Path) -> None:
    """The zoo model's state_dict (the seeded weights ``ts.compile`` builds it with) as numpy arrays."""
    import numpy as np

    from tvm_shuffle import models

    path.parent.mkdir(parents=True, exist_ok=True)
    state = models.build_model(model).state_dict()
    np.savez_compressed(path, **{name: tensor.detach().cpu().numpy() for name, tensor in state.items()})


def seeded_input(shape: Sequence[int], seed: int = INPUT_SEED):
    """The input every engine is checked on (``run_gpu.py`` draws the same)."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype("float32")


def expected_logits(model: str, input_shape: Sequence[int], path: Path, randomized_bn: bool = False) -> None:
    """PyTorch's CPU logits of the zoo model on the seeded input, for the GPU side to compare with."""
    import numpy as np
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        logits = network(model, randomized_bn)(torch.from_numpy(seeded_input(input_shape)))
    np.save(path, logits.numpy())


def x86_int8_logits(model: str, input_shape: Sequence[int], path: Path) -> None:
    """The int8 network's logits from its build for this CPU (same graph, calibration and integer sums).

    On the GPU, the int8 bundle's logits differ from these only by the
    rounding of its fp32 kernels (and the requantizations that flips):
    a check of the dp4a kernels apart from the error of int8 itself.
    """
    import warnings

    import numpy as np

    import tvm_shuffle as ts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = ts.compile(network(model, randomized_bn=True), "x86", input_shape=input_shape, precision="int8",
                              quiet=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, compiled(seeded_input(input_shape))[0])


# ---------------------------------------------------------------- the C++ app, the wheel, the runner

def build_app(bundle: Path, app_dir: Path) -> Path:
    """The bundle's example app (``example/CMakeLists.txt``), built here; it runs any of the kit's bundles."""
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            raise UserError(f"building the C++ app needs {tool} (apt-get install cmake g++)")
    with tempfile.TemporaryDirectory(prefix="kit_app_") as build_dir:
        for command in (["cmake", "-S", str(bundle / "example"), "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"],
                        ["cmake", "--build", build_dir, "-j", "2"]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise UserError(f"`{shlex.join(command)}` failed: {done.stderr.strip().splitlines()[-1:]}")
        app_dir.mkdir(parents=True, exist_ok=True)
        for name in ("classify", "libtvm_ffi.so"):  # the app finds libtvm_ffi.so beside itself
            shutil.copy2(Path(build_dir) / name, app_dir / name)
    return app_dir / "classify"


def glibc_needs(binary: Path) -> dict[str, str]:
    """The newest GLIBC and GLIBCXX symbol versions a binary needs (the GPU machine must have them)."""
    out = subprocess.run(["objdump", "-T", str(binary)], capture_output=True, text=True).stdout
    needs = {}
    for lib in ("GLIBC", "GLIBCXX"):
        versions = set(re.findall(rf"\b{lib}_([\d.]+)\b", out))
        if versions:
            needs[lib] = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    return needs


def ffi_wheel(version: str, given: Path | None) -> Path:
    """The apache-tvm-ffi wheel for CPython 3.12 on x86-64: ``given``, or downloaded once into the cache."""
    if given is not None:
        if not given.is_file():
            raise UserError(f"--ffi-wheel {given} does not exist")
        return given
    from tvm_shuffle import host

    cache = host.cache_dir() / "wheels" / f"{FFI_DIST}-{version}-cp312"
    found = sorted(cache.glob("*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--python-version", WHEEL_PYTHON, "--only-binary=:all:",
               "--platform", WHEEL_PLATFORM, "--no-deps", "--dest", str(cache), f"{FFI_DIST}=={version}"]
    log(f"downloading the {FFI_DIST} {version} wheel for CPython {WHEEL_PYTHON} into {cache}")
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(cache.glob("*.whl"))
    if done.returncode != 0 or not found:
        raise UserError(f"cannot download the {FFI_DIST} wheel (offline?) with `{shlex.join(command)}`; "
                         "pass one with --ffi-wheel")
    return found[0]


def copy_runner(kit: Path) -> None:
    """``run_gpu.py`` and the PyTorch model definition it imports."""
    import tvm_shuffle

    shutil.copy2(HERE / "run_gpu.py", kit / "run_gpu.py")
    package = Path(tvm_shuffle.__file__).parent
    for name in MODEL_SOURCES:
        (kit / "py" / "tvm_shuffle").mkdir(parents=True, exist_ok=True)
        shutil.copy2(package / name, kit / "py" / "tvm_shuffle" / name)


# ---------------------------------------------------------------- kit layout

def store_shared_once(kit: Path, trees: Sequence[str]) -> dict[str, str]:
    """Files with the same content in several places under ``trees``: kept once in ``common/``.

    Returns {where it belongs: where it is kept}; ``run_gpu.py`` copies them
    back before running.
    """
    by_digest: dict[str, list[Path]] = {}
    for tree in trees:
        for path in sorted((kit / tree).rglob("*")):
            if path.is_file():
                by_digest.setdefault(sha256(path), []).append(path)
    copies = {}
    for digest, paths in by_digest.items():
        if len(paths) < 2:
            continue
        kept = kit / "common" / f"{digest[:16]}-{paths[0].name}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths[0], kept)
        for path in paths:
            copies[path.relative_to(kit).as_posix()] = kept.relative_to(kit).as_posix()
            path.unlink()
    return copies


def compress_libraries(kit: Path, libraries: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The bundles' ``model.so`` stored gzipped (the weights and device code shrink by 15-20 %).

    Returns {where it belongs: {"stored": the .gz, "size", "sha256" of the
    library itself}}; ``run_gpu.py`` writes them back before it runs, and
    its self-check reads them decompressed.
    """
    table = {}
    for rel in libraries:
        library = kit / rel
        stored = library.with_name(library.name + ".gz")
        stored.write_bytes(gzip.compress(library.read_bytes(), 9, mtime=0))
        table[rel] = {"stored": stored.relative_to(kit).as_posix(), "size": library.stat().st_size,
                      "sha256": sha256(library)}
        library.unlink()
    return table


def file_table(kit: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(kit).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(kit.rglob("*")) if p.is_file() and p.name != KIT_JSON and "__pycache__" not in p.parts}


def prepare_out(out: Path) -> None:
    """An empty directory, or an old kit, which is replaced; anything else is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / KIT_JSON).is_file():
            raise UserError(f"{out} is not empty and holds no {KIT_JSON}; pick a new --out directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def cuda_spec(arch: str):
    from tvm_shuffle import targets

    name = f"cuda-{arch}"
    if name not in targets.TARGETS:
        valid = sorted(n.removeprefix("cuda-") for n in targets.TARGETS if n.startswith("cuda-"))
        raise UserError(f"--arch {arch} has no CUDA preset; valid: {', '.join(valid)}")
    return targets.get(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu/pack.py", description=__doc__.split("\n\n")[0],
                                     epilog="See benchmarks/gpu/README.md.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write the kit")
    parser.add_argument("--arch", default="sm_90", help="CUDA compute capability of the GPU machine (default sm_90)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"zoo models (default {','.join(MODELS)})")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (default 1,64)")
    parser.add_argument("--input-size", type=int, default=224, metavar="PIXELS", help="image side (default 224)")
    parser.add_argument("--int8", default=INT8_BUNDLES, metavar="MODEL:BATCH,...",
                        help=f"also built in int8, calibrated on the synthetic set (default {INT8_BUNDLES}; none: no int8)")
    parser.add_argument("--fp16", default=FP16_BUNDLES, metavar="MODEL:BATCH,...",
                        help=f"also built in fp16, 1x1 convolutions on tensor cores (default {FP16_BUNDLES}; none: no fp16)")
    parser.add_argument("--work-dir", type=Path, default=Path("work"),
                        help="tuning records to build from where they exist (default ./work)")
    parser.add_argument("--ffi-wheel", type=Path, metavar="WHEEL", help="an apache-tvm-ffi cp312 wheel to carry "
                        "(default: the installed version's, downloaded once)")
    parser.add_argument("--max-mb", type=float, default=MAX_MB, help=f"size limit of the kit (default {MAX_MB})")
    parser.add_argument("--no-self-check", action="store_true", help="skip run_gpu.py --self-check at the end")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    batches = parse_batches(args.batches)
    reduced = {"int8": parse_pairs("--int8", args.int8), "fp16": parse_pairs("--fp16", args.fp16)}
    if args.input_size < 16:
        raise UserError(f"--input-size {args.input_size} is too small (16 or more)")
    from tvm_shuffle import models

    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names + [m for pairs in reduced.values() for m, _ in pairs] if m not in models.MODELS]
    if not names or unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
                         f"see python -m tvm_shuffle.models")
    spec = cuda_spec(args.arch)
    ffi_version = importlib.metadata.version(FFI_DIST)
    wheel = ffi_wheel(ffi_version, args.ffi_wheel)
    kit = args.out.resolve()
    prepare_out(kit)
    start = time.perf_counter()

    from tvm_shuffle import precisions

    bundles = []
    for model, batch, precision in plan(names, batches, reduced):
        if not (kit / "weights" / f"{model}.npz").exists():
            save_weights(model, kit / "weights" / f"{model}.npz")
        shape = (batch, 3, args.input_size, args.input_size)
        name = bundle_name(model, batch, precision)
        log(f"building {name} for {spec.name} ({'x'.join(map(str, shape))})")
        t = time.perf_counter()
        is_reduced = precision != "fp32"
        label, manifest = build_bundle(model, spec, shape, kit / "bundles" / name, args.work_dir, precision)
        library = kit / "bundles" / name / "model.so"
        code = device_code(library)
        if not code["fatbin"] or code["cuda_source"]:
            raise UserError(f"{library} holds {'CUDA source' if code['cuda_source'] else 'no fatbin'}")
        expected_logits(model, shape, kit / "expected" / f"{name}.npy", randomized_bn=is_reduced)
        entry = {"name": name, "dir": f"bundles/{name}", "model": model, "batch": batch,
                 "input_shape": list(shape), "schedules": label, "weights": f"weights/{model}.npz",
                 "expected": f"expected/{name}.npy", "device_code": code, "launch_plan": launch_plan(library),
                 "precision": {**manifest["precision"],
                               **({"tolerance": precisions.get(precision).tolerance} if is_reduced else {})}}
        if is_reduced:
            entry["batchnorm_seed"] = BN_SEED
        if precisions.get(precision).calibrated:
            x86_int8_logits(model, shape, kit / "expected" / f"{name}.x86_int8.npy")
            entry["expected_x86_int8"] = f"expected/{name}.x86_int8.npy"
        bundles.append(entry)
        log(f"  {label}, {library.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t:.0f} s")

    log("building the C++ example app")
    app = build_app(kit / bundles[0]["dir"], kit / "app")
    (kit / "wheels").mkdir()
    shutil.copy2(wheel, kit / "wheels" / wheel.name)
    copy_runner(kit)
    copies = store_shared_once(kit, ["bundles", "app"])
    compressed = compress_libraries(kit, [f"{bundle['dir']}/model.so" for bundle in bundles])

    import torch

    from tvm_shuffle.tvm_compat import TVM_VERSION

    info = {
        "kit_version": KIT_VERSION,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "built_on": platform.node(),
        "command": shlex.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "target": spec.name, "arch": args.arch, "cuda_graphs": bool(spec.pass_config.get("relax.backend.use_cuda_graph")),
        "tvm": TVM_VERSION, "tvm_ffi": ffi_version, "torch_here": torch.__version__,
        "input_seed": INPUT_SEED, "bundles": bundles,
        "app": {"path": "app/classify", "needs": glibc_needs(app)},
        "ffi_wheel": f"wheels/{wheel.name}", "python_path": "py",
        "copies": copies, "compressed": compressed, "files": file_table(kit),
    }
    (kit / KIT_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    total = sum(f["size"] for f in info["files"].values()) + (kit / KIT_JSON).stat().st_size
    log(f"kit {kit}: {total / 1e6:.1f} MB in {len(info['files']) + 1} files, {len(copies)} shared files stored once, "
        f"{time.perf_counter() - start:.0f} s")
    if total > args.max_mb * 1e6:
        raise UserError(f"the kit is {total / 1e6:.1f} MB, over --max-mb {args.max_mb:g}: "
                         "pack fewer models or batches")
    if not args.no_self_check:
        done = subprocess.run([sys.executable, str(kit / "run_gpu.py"), "--self-check"])
        if done.returncode != 0:
            return done.returncode
    print(f"kit ready: {kit} ({total / 1e6:.1f} MB); on the GPU machine: "
          f"python3 {os.path.relpath(kit)}/run_gpu.py --out RESULTS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
