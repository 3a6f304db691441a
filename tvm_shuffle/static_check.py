"""Static code check of a CPU library's kernels: what the innermost loops of their machine code do.

A board's timings need the board; the code its kernels run does not. This
module disassembles a built library with binutils' ``objdump``, finds each
kernel's innermost loops (a backward branch closes a loop; an innermost loop
contains no other) and counts, per loop, the instruction classes that say
whether a schedule fits the register file: vector and scalar FMAs, vector
loads and stores, and stack spills and reloads. A well-tiled convolution's
hot loop is vector FMAs fed by a few loads; a spill or a scalar FMA in an
innermost loop means the tile is too large for the registers, or the loop
did not vectorize.

The same kernel is counted in the aarch64 build and in the x86-64 build of
the same model, beside its FLOPs. Kernels of the two builds are paired by the
position of their calls in the model (:func:`pair_kernels`), not by name:
x86's graph passes rename some (``pad_depthwise_rows``).

Pure functions on objdump's text (:func:`parse_objdump`, :func:`innermost_loops`,
:func:`count_loop`), a table (:func:`kernel_table`) and its Markdown
(:func:`markdown`); :func:`analyze` builds both libraries from an imported
model with :mod:`tvm_shuffle.build` and returns everything a report shows.

Stack accesses inside an innermost loop are counted as spills and reloads:
TVM's kernels keep their buffers on the heap (``TVMBackendAllocWorkspace``)
or in registers, so the stack there is the register allocator's.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tvm_shuffle.errors import UserError

FFI_PREFIX = "__tvm_ffi_"  # the packed-function wrapper TVM exports per kernel
COMPUTE_SUFFIX = "_compute_"  # the kernel's body; its parallel lambdas follow it without symbols
PACKED_SUFFIX = "_prepacked"  # SplitLayoutRewritePreproc's rename of a kernel whose weights are packed at build time

METHOD = ("static analysis of the generated machine code (objdump -d of the built library), "
          "not a measurement: innermost loops are found from backward branches")


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    mnemonic: str
    operands: str  # as objdump prints them, comments and symbol annotations removed
    target: int | None = None  # the address a direct branch goes to


@dataclasses.dataclass(frozen=True)
class LoopCounts:
    """Instruction classes of one loop body."""

    instructions: int = 0
    vector_fma: int = 0
    scalar_fma: int = 0
    vector_loads: int = 0
    vector_stores: int = 0
    spills: int = 0  # stores to the stack
    reloads: int = 0  # loads from the stack
    vector_spills: int = 0  # of the spills and reloads, those of FP/SIMD registers (the rest: general registers)

    @property
    def fma_share(self) -> float:
        return (self.vector_fma + self.scalar_fma) / self.instructions if self.instructions else 0.0

    def __add__(self, other: "LoopCounts") -> "LoopCounts":
        return LoopCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


# ---------------------------------------------------------------- objdump text

RETURNS = ("ret", "retq", "eret")
_FUNCTION = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(.*)$")
_BRANCH_TARGET = re.compile(r"\b([0-9a-f]+) <[^>]*>")


def parse_objdump(text: str) -> dict[str, list[Instruction]]:
    """Function name -> its instructions, from ``objdump -d --no-show-raw-insn`` (any architecture)."""
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in text.splitlines():
        header = _FUNCTION.match(line)
        if header:
            current = functions.setdefault(header.group(2), [])
            continue
        body = _LINE.match(line)
        if body is None or current is None:
            continue
        instruction = parse_instruction(int(body.group(1), 16), body.group(2))
        if instruction is not None:
            current.append(instruction)
    return functions


def parse_instruction(address: int, text: str) -> Instruction | None:
    """One disassembled line (mnemonic and operands); None for padding objdump could not decode."""
    text = text.strip()
    if not text or text.startswith("(bad)") or text.startswith(".word") or text.startswith(".inst"):
        return None
    target_match = _BRANCH_TARGET.search(text)
    target = int(target_match.group(1), 16) if target_match else None
    text = re.sub(r"\s*<[^>]*>", "", text)
    text = re.sub(r"\s*(//|#\s).*$", "", text)  # aarch64 "// #1", x86 "# 0x1234"
    words = text.split(None, 1)
    prefixes = {"lock", "rep", "repz", "repnz", "repe", "repne", "notrack", "data16", "cs", "ds", "bnd"}
    while len(words) == 2 and words[0] in prefixes:
        words = words[1].split(None, 1)
    mnemonic = words[0]
    operands = words[1].strip() if len(words) > 1 else ""
    return Instruction(address, mnemonic, operands, target)


def innermost_loops(instructions: Sequence[Instruction], is_branch: Callable[[str], bool],
                    is_call: Callable[[str], bool] = lambda mnemonic: False) -> list[list[Instruction]]:
    """The bodies of the innermost loops: ranges closed by a backward branch that contain no other such range.

    A range with a return in it is not a loop: LLVM jumps back to a shared
    epilogue (``b <restore registers; ret>``) from code laid out after it.
    A loop that calls a function is not innermost either: the callee's loop
    is (a padding's row fill calls ``memset``), and the registers the loop
    saves around the call follow the calling convention, not the tile.
    """
    if not instructions:
        return []
    first, last = instructions[0].address, instructions[-1].address
    returns = [i.address for i in instructions if i.mnemonic in RETURNS]
    calls = [i.address for i in instructions if is_call(i.mnemonic)]
    loops = sorted({(i.target, i.address) for i in instructions
                    if i.target is not None and is_branch(i.mnemonic) and first <= i.target <= i.address <= last
                    and not any(i.target <= r <= i.address for r in returns)})
    inner = [(start, end) for start, end in loops
             if not any((s, e) != (start, end) and start <= s and e <= end for s, e in loops)
             and not any(start <= c <= end for c in calls)]
    return [[i for i in instructions if start <= i.address <= end] for start, end in inner]


# ---------------------------------------------------------------- instruction classes, per ISA

def _split_operands(operands: str) -> list[str]:
    """Top-level comma-separated operands (commas inside (), [] and {} belong to the operand)."""
    parts, depth, current = [], 0, ""
    for ch in operands:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


# aarch64 (objdump's ARM syntax: destination first, memory as [base, ...])
# q: 128-bit, d: a 64-bit vector (two floats: the .2s of a 2-lane row piece), v.<lanes>, SVE z, and {v..} lists.
_A64_VECTOR_REG = re.compile(r"^(v\d+\.\d*[bhsd]|[qd]\d+|z\d+(\.[bhsd])?)\b|^\{\s*v\d+")
# NEON and SVE multiply-accumulates (SVE's fmad/fmsb overwrite a multiplicand instead of the sum).
_A64_FMA = {"fmla", "fmls", "fnmla", "fnmls", "fmad", "fmsb", "fnmad", "fnmsb", "bfmla", "fmlal", "fmlal2", "fmlsl",
            "fmlsl2",
            "sdot", "udot", "usdot", "sudot", "mla", "mls",  # the int8 kernels': dot products, 32-bit multiply-adds
            "bfdot", "bfmmla", "bfmlalb", "bfmlalt"}  # the bf16 kernels' (Armv8.6 BF16): bf16 products, fp32 sums
_A64_SCALAR_FMA = {"fmadd", "fmsub", "fnmadd", "fnmsub"}
_A64_FP_REG = re.compile(r"^(\{\s*)?[vqdshbz]\d+")


def _a64_is_branch(mnemonic: str) -> bool:
    return mnemonic in ("b", "cbz", "cbnz", "tbz", "tbnz") or mnemonic.startswith("b.")


def _a64_is_call(mnemonic: str) -> bool:
    return mnemonic in ("bl", "blr")


def _a64_count(instruction: Instruction) -> LoopCounts:
    m, ops = instruction.mnemonic, _split_operands(instruction.operands)
    first = ops[0] if ops else ""
    vector = bool(_A64_VECTOR_REG.match(first))
    stack = "[sp" in instruction.operands
    load = m.startswith("ld") and not m.startswith("ldadd")
    store = m.startswith("st") and not m.startswith("stadd")
    return LoopCounts(
        instructions=1,
        vector_fma=int(m in _A64_FMA and vector),
        scalar_fma=int(m in _A64_SCALAR_FMA or (m in _A64_FMA and not vector)),
        vector_loads=int(load and vector and not stack),
        vector_stores=int(store and vector and not stack),
        spills=int(store and stack),
        reloads=int(load and stack),
        vector_spills=int((load or store) and stack and bool(_A64_FP_REG.match(first))),
    )


# x86-64 (objdump's AT&T syntax: destination last, memory as disp(base,index,scale))
_X86_VECTOR_REG = re.compile(r"%[xyz]mm\d+")
_X86_FMA = re.compile(r"^v?f(n?m(add|sub)|maddsub|msubadd)(\d{3})?(p|s)[sdh]$")
_X86_SCALAR = re.compile(r"(ss|sd|sh)$")  # scalar SSE/AVX forms: vmovss, vaddsd, vfmadd231ss (not vbroadcastss)


def _x86_is_branch(mnemonic: str) -> bool:
    return mnemonic.startswith("j") or mnemonic.startswith("loop")


def _x86_is_call(mnemonic: str) -> bool:
    return mnemonic.startswith("call")


def _x86_count(instruction: Instruction) -> LoopCounts:
    m, ops = instruction.mnemonic, _split_operands(instruction.operands)
    memory = [i for i, op in enumerate(ops) if "(" in op]
    destination_memory = bool(memory) and memory[-1] == len(ops) - 1 and not m.startswith(("cmp", "test", "prefetch"))
    source_memory = any(i != len(ops) - 1 for i in memory) or (bool(memory) and not destination_memory)
    vector = bool(_X86_VECTOR_REG.search(instruction.operands)) and ("broadcast" in m or not _X86_SCALAR.search(m))
    stack = "(%rsp" in instruction.operands
    fma = _X86_FMA.match(m)
    return LoopCounts(
        instructions=1,
        vector_fma=int(bool(fma) and fma.group(4) == "p" or m.startswith("vpdp")),  # vpdpbusd: VNNI (int8)
        scalar_fma=int(bool(fma) and fma.group(4) == "s"),
        vector_loads=int(vector and source_memory and not stack),
        vector_stores=int(vector and destination_memory and not stack),
        spills=int(destination_memory and stack and not m.startswith(("push", "call"))),
        reloads=int(source_memory and stack and not m.startswith("lea")),
        vector_spills=int(stack and not m.startswith("lea") and bool(_X86_VECTOR_REG.search(instruction.operands))),
    )


@dataclasses.dataclass(frozen=True)
class Isa:
    """How to disassemble one architecture and classify its instructions."""

    arch: str
    objdump: str
    package: str  # the Debian package that provides ``objdump``
    is_branch: Callable[[str], bool]
    is_call: Callable[[str], bool]
    count: Callable[[Instruction], LoopCounts]


ISAS = {
    "aarch64": Isa("aarch64", "aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu", _a64_is_branch, _a64_is_call,
                   _a64_count),
    "x86_64": Isa("x86_64", "objdump", "binutils", _x86_is_branch, _x86_is_call, _x86_count),
}


def count_loop(body: Iterable[Instruction], isa: Isa) -> LoopCounts:
    total = LoopCounts()
    for instruction in body:
        total = total + isa.count(instruction)
    return total


# ---------------------------------------------------------------- kernels

def kernel_functions(functions: Mapping[str, list[Instruction]], kernel: str) -> list[Instruction] | None:
    """A kernel's code: its body with the parallel lambdas after it (else its wrapper); None if absent.

    ``kernel`` is the name of the lowered kernel; the library may hold it
    renamed with :data:`PACKED_SUFFIX`.
    """
    for name in (kernel, kernel + PACKED_SUFFIX):
        for symbol in (name + COMPUTE_SUFFIX, name, FFI_PREFIX + name):  # the body; the wrapper only checks arguments
            if functions.get(symbol):
                return functions[symbol]
    return None


@dataclasses.dataclass(frozen=True)
class KernelCode:
    """The innermost loops of one kernel, each counted, and all of them together (``inner``: each instruction once)."""

    loops: tuple[LoopCounts, ...]
    inner: LoopCounts = LoopCounts()

    @property
    def hot(self) -> LoopCounts:
        """The innermost loop with the most FMAs (the compute loop); without FMAs, the longest."""
        if not self.loops:
            return LoopCounts()
        return max(self.loops, key=lambda c: (c.vector_fma + c.scalar_fma, c.instructions))

    @property
    def inner_spills(self) -> int:
        return self.inner.spills + self.inner.reloads

    @property
    def inner_scalar_fma(self) -> int:
        return self.inner.scalar_fma


def analyze_kernel(instructions: Sequence[Instruction], isa: Isa) -> KernelCode:
    """Count each innermost loop, and their union (loops found from branches may overlap; nothing counts twice)."""
    loops = innermost_loops(instructions, isa.is_branch, isa.is_call)
    union = {i.address: i for body in loops for i in body}
    return KernelCode(tuple(count_loop(body, isa) for body in loops), count_loop(union.values(), isa))


def disassemble(library: str | Path, arch: str) -> str:
    """``objdump -d`` of a library for ``arch``; a :class:`UserError` naming the package when objdump is missing."""
    isa = ISAS[arch]
    objdump = shutil.which(isa.objdump)
    if objdump is None:
        raise UserError(f"the static code check of {arch} kernels needs {isa.objdump} "
                        f"(apt-get install {isa.package})")
    done = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{isa.objdump} cannot read {library}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def _side(code: KernelCode | None, prefix: str) -> dict[str, Any]:
    if code is None:
        return {f"{prefix}_found": False}
    hot = code.hot
    return {f"{prefix}_found": True, f"{prefix}_inner_loops": len(code.loops),
            f"{prefix}_instructions": hot.instructions, f"{prefix}_vector_fma": hot.vector_fma,
            f"{prefix}_scalar_fma": hot.scalar_fma, f"{prefix}_vector_loads": hot.vector_loads,
            f"{prefix}_vector_stores": hot.vector_stores, f"{prefix}_spills": hot.spills,
            f"{prefix}_reloads": hot.reloads, f"{prefix}_fma_share": round(hot.fma_share, 3),
            f"{prefix}_inner_spills": code.inner_spills, f"{prefix}_inner_vector_spills": code.inner.vector_spills,
            f"{prefix}_inner_scalar_fma": code.inner_scalar_fma}


def flags(row: Mapping[str, Any], prefix: str = "arm") -> list[str]:
    """What is wrong with a kernel's innermost loops on one side: spills (vector registers, general ones), scalar FMAs."""
    found = []
    vector = row.get(f"{prefix}_inner_vector_spills") or 0
    general = (row.get(f"{prefix}_inner_spills") or 0) - vector
    if vector:
        found.append(f"{vector} vector-register spills/reloads in inner loops")
    if general:
        found.append(f"{general} general-register spills/reloads in inner loops")
    if row.get(f"{prefix}_inner_scalar_fma"):
        found.append(f"{row[f'{prefix}_inner_scalar_fma']} scalar FMAs in inner loops")
    return found


def kernel_table(arm_library_path: str | Path, x86_library_path: str | Path | None,
                 flops_by_kernel: Mapping[str, float], *, x86_name_of: Mapping[str, str] | None = None,
                 calls_by_kernel: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per kernel of ``flops_by_kernel`` (the lowered model's kernels, FLOPs per call).

    Each row counts the kernel's hottest innermost loop (``arm_*`` and
    ``x86_*``: instructions, vector/scalar FMAs, vector loads/stores, spills,
    reloads, FMA share), the spills and scalar FMAs of all its innermost loops
    (``*_inner_*``), and ``flags``: what the aarch64 code gets wrong.
    ``x86_name_of`` maps a kernel to its name in the x86 build (default: the
    same; see :func:`pair_kernels`); ``x86_library_path`` None leaves the x86
    columns out.
    """
    arm = parse_objdump(disassemble(arm_library_path, "aarch64"))
    x86 = parse_objdump(disassemble(x86_library_path, "x86_64")) if x86_library_path else None
    rows = []
    for kernel, kernel_flops in flops_by_kernel.items():
        arm_code = kernel_functions(arm, kernel)
        row: dict[str, Any] = {"kernel": kernel, "flops": kernel_flops,
                               "calls": (calls_by_kernel or {}).get(kernel)}
        row.update(_side(analyze_kernel(arm_code, ISAS["aarch64"]) if arm_code else None, "arm"))
        if x86 is not None:
            x86_name = (x86_name_of or {}).get(kernel, kernel)
            x86_code = kernel_functions(x86, x86_name)
            row["x86_kernel"] = x86_name
            row.update(_side(analyze_kernel(x86_code, ISAS["x86_64"]) if x86_code else None, "x86"))
        row["flags"] = flags(row)
        rows.append(row)
    return rows


def flagged(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Kernels whose aarch64 code has a spill or a scalar FMA in an innermost loop."""
    return [r["kernel"] for r in rows if r["flags"]]


# ---------------------------------------------------------------- Markdown

def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0%}" if value <= 1 else f"{value / 1e6:.2f}"
    return str(value)


def pair_cell(row: Mapping[str, Any], key: str) -> str:
    """``arm / x86`` of one column."""
    arm = _cell(row.get(f"arm_{key}")) if row.get("arm_found") else "not found"
    if "x86_found" not in row:
        return arm
    x86 = _cell(row.get(f"x86_{key}")) if row.get("x86_found") else "not found"
    return f"{arm} / {x86}"


MARKDOWN_COLUMNS = (("vector FMA", "vector_fma"), ("scalar FMA", "scalar_fma"), ("vector loads", "vector_loads"),
                    ("vector stores", "vector_stores"), ("spills", "spills"), ("reloads", "reloads"),
                    ("FMA share", "fma_share"), ("instructions", "instructions"))


def markdown(rows: Sequence[Mapping[str, Any]], *, arm_label: str = "aarch64", x86_label: str = "x86-64") -> str:
    """The table as a Markdown section: one row per kernel, ``aarch64 / x86-64`` counts of its hottest inner loop."""
    both = any("x86_found" in r for r in rows)
    sides = f"{arm_label} / {x86_label}" if both else arm_label
    bad = flagged(rows)
    lines = [
        "## Static code check of the kernels (no device: generated code, not timings)",
        "",
        f"This section is a {METHOD}. For each kernel, the innermost loop with the most FMAs "
        f"(without FMAs, the longest) is counted, as `{sides}`; *flags* count spills and scalar FMAs in all "
        "of the kernel's innermost loops of the aarch64 build. MFLOP: per call, TVM's estimate.",
        "",
        f"**{len(bad)} of {len(rows)} kernels flagged** (a stack spill or a scalar FMA in an innermost loop"
        f"{': ' + ', '.join(bad) if bad else ''}).",
        "",
        "| kernel | calls | MFLOP | " + " | ".join(title for title, _ in MARKDOWN_COLUMNS) + " | flags |",
        "|---|---:|---:|" + "---:|" * len(MARKDOWN_COLUMNS) + "---|",
    ]
    for r in rows:
        mflop = f"{r['flops'] / 1e6:.2f}" if r.get("flops") else "–"
        cells = [pair_cell(r, key) for _, key in MARKDOWN_COLUMNS]
        lines.append(f"| `{r['kernel']}` | {_cell(r.get('calls'))} | {mflop} | " + " | ".join(cells)
                     + f" | {'; '.join(r['flags']) or 'ok'} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- building what it reads

def call_sequence(mod) -> list[str]:
    """Names of the kernels ``main`` calls, in call order (one entry per call)."""
    from tvm_shuffle.tvm_compat import relax, tvm

    call_tir = tvm.ir.Op.get("relax.call_tir")
    names: list[str] = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            names.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


def pair_kernels(arm_calls: Sequence[str], x86_calls: Sequence[str]) -> dict[str, str]:
    """ARM kernel -> x86 kernel, paired by the position of their calls in the two lowerings of one model.

    The two builds lower the same Relax graph, call for call; only names
    differ (x86's depthwise convolutions compute padded rows and are named
    ``conv2d_depthwise``), and a kernel one build makes of several calls of
    the other (:func:`_call_slots`) takes their places, pairing with none. A kernel whose calls
    pair with different x86 kernels, or call sequences of different
    lengths, pair nothing.
    """
    arm_slots, x86_slots = _call_slots(arm_calls), _call_slots(x86_calls)
    if len(arm_slots) != len(x86_slots):
        return {}
    pairs: dict[str, set[str]] = {}
    for arm, x86 in zip(arm_slots, x86_slots):
        if arm is not None:
            pairs.setdefault(arm, set()).add(x86)
    return {arm: next(iter(x86)) for arm, x86 in pairs.items() if len(x86) == 1 and None not in x86}


def _call_slots(calls: Sequence[str]) -> list[str | None]:
    """``calls`` with x86's fused stem (:mod:`tvm_shuffle.schedules.stem`: the stem's convolution and its
    max-pool in one kernel) as two empty slots."""
    from tvm_shuffle.schedules.stem import STEM_POOL

    return [slot for name in calls for slot in ([None, None] if name == STEM_POOL else [name])]


def analyze(imported, spec, out_dir: str | Path, *, x86_spec=None, shuffle: str = "fused", database=None,
            log: Callable[[str], None] | None = None, precision: str = "fp32", calibration=None) -> dict[str, Any]:
    """Build ``imported`` for the aarch64 ``spec`` and for x86-64, disassemble both, and count every kernel.

    ``x86_spec`` defaults to this host's x86 preset. ``database`` applies
    tuned schedules to the aarch64 build (default: the default schedules).
    ``precision`` and ``calibration`` (int8: a :class:`tvm_shuffle.quantize.Calibration`)
    are the build's, as :func:`tvm_shuffle.passes.optimize` takes them.
    The libraries are written to ``out_dir/<target>/model.so`` (not bundled).
    Returns ``{"method", "arm_target", "x86_target", "rows", "flagged"}``;
    :func:`markdown` renders ``rows``.
    """
    from tvm_shuffle import build, passes, profile, targets

    log = log or (lambda message: print(message, file=sys.stderr))
    if spec.runtime_arch != "aarch64":
        raise UserError(f"the static code check reads aarch64 code; target {spec.name} is {spec.runtime_arch}")
    x86_spec = x86_spec or targets.get("x86")
    mod = passes.optimize(imported.mod, shuffle=shuffle, precision=precision, calibration=calibration)
    lowered = build.lower(mod, spec)
    arm_calls, x86_calls = call_sequence(lowered), call_sequence(build.lower(mod, x86_spec))
    flops = {name: cost.flops for name, cost in profile.kernel_costs(lowered).items() if name in set(arm_calls)}
    calls = {name: arm_calls.count(name) for name in flops}
    libraries = {}
    for side, side_spec, db in (("arm", spec, database), ("x86", x86_spec, None)):
        log(f"static check: building {imported.name} for {side_spec.name}")
        libraries[side] = build.export(build.build(mod, side_spec, database=db), side_spec,
                                       Path(out_dir) / side_spec.name)
    log("static check: disassembling and counting the kernels' innermost loops")
    rows = kernel_table(libraries["arm"], libraries["x86"], flops,
                        x86_name_of=pair_kernels(arm_calls, x86_calls), calls_by_kernel=calls)
    return {"method": METHOD, "arm_target": spec.to_dict(), "x86_target": x86_spec.to_dict(),
            "tuned": database is not None, "rows": rows, "flagged": flagged(rows)}


__all__ = ["Instruction", "LoopCounts", "KernelCode", "Isa", "ISAS", "METHOD", "parse_objdump", "parse_instruction",
           "innermost_loops", "count_loop", "kernel_functions", "analyze_kernel", "disassemble", "kernel_table",
           "flags", "flagged", "markdown", "pair_cell", "MARKDOWN_COLUMNS", "call_sequence", "pair_kernels", "analyze"]
