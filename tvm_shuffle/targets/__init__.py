"""Compilation targets as plain data, one file per hardware family.

Adding a board means adding a :class:`TargetSpec` to ``x86.py``, ``arm.py`` or
``cuda.py`` (or passing ``--target-file`` with the same fields as JSON). The
CLIs' ``--target`` choices and the tests' parametrization come from
:data:`TARGETS`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

from tvm_shuffle.errors import UserError, unknown_name
from tvm_shuffle.targets.spec import HOST_CPU, LOCAL_GPU, TargetSpec
from tvm_shuffle.targets import arm, cuda, x86

TARGETS: dict[str, TargetSpec] = {}
ALIASES: dict[str, str] = {}

for _family in (x86, arm, cuda):
    for _spec in _family.SPECS:
        if _spec.name in TARGETS:
            raise RuntimeError(f"duplicate target {_spec.name}")
        TARGETS[_spec.name] = _spec
    ALIASES.update(_family.ALIASES)


def names() -> list[str]:
    """Every name ``--target`` accepts: presets and aliases."""
    return sorted([*TARGETS, *ALIASES])


def get(name: str) -> TargetSpec:
    """Look a preset up by name or alias and resolve host-dependent fields."""
    spec = TARGETS.get(ALIASES.get(name, name))
    if spec is None:
        raise unknown_name("target", name, names())
    return resolve(spec)


def resolve(spec: TargetSpec) -> TargetSpec:
    """Fill the fields detected on this machine: the x86 ``mcpu`` (:data:`HOST_CPU`), the local GPU's ``arch``."""
    if spec.target.get("mcpu") == HOST_CPU:
        return dataclasses.replace(spec, target={**spec.target, "mcpu": x86.detect_host_cpu()})
    if spec.target.get("arch") == LOCAL_GPU:
        return dataclasses.replace(spec, target={**spec.target, "arch": cuda.detect_local_arch()})
    return spec


def load_target_file(path: str | os.PathLike) -> TargetSpec:
    """A board described in JSON with the fields of :class:`TargetSpec`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"target file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"target file {path} is not valid JSON: {err}") from None
    return resolve(spec_from_dict(data, source=str(path)))


def spec_from_dict(data: Mapping[str, Any], *, source: str = "target file") -> TargetSpec:
    fields = {f.name for f in dataclasses.fields(TargetSpec)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(f"{source}: unknown fields {unknown}; valid fields: {sorted(fields)}")
    missing = sorted(f.name for f in dataclasses.fields(TargetSpec)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                     and f.name not in data)
    if missing:
        raise UserError(f"{source}: missing fields {missing}")
    return TargetSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


def require_cross_compiler(spec: TargetSpec) -> str | None:
    """Path of the spec's C++ (cross-)compiler; a clear error when it is not installed."""
    if spec.cross_compiler is None:
        return None
    path = shutil.which(spec.cross_compiler)
    if path is None:
        hint = f" (apt-get install {spec.cross_compiler_package})" if spec.cross_compiler_package else ""
        raise UserError(f"cross-compiler {spec.cross_compiler} for target {spec.name} is not installed{hint}")
    return path


__all__ = ["TARGETS", "ALIASES", "TargetSpec", "get", "resolve", "names", "load_target_file", "spec_from_dict",
           "require_cross_compiler"]
