"""tvm_shuffle: compile, tune and ship ShuffleNet-class networks with Apache TVM.

The Python API (:mod:`tvm_shuffle.api`)::

    import tvm_shuffle as ts

    compiled = ts.compile(model, "x86", example_inputs=(x,))  # Compiled: call it, .save(dir), .profile()
    tuned = ts.tune(model, "x86", trials=200)                 # the same, with MetaSchedule's kernels
    ts.load("out/m")(x_np)                                     # a saved bundle, with only the runtime
    ts.report(model, "x86").save("reports/")                   # against PyTorch, ONNX Runtime, OpenVINO, ncnn

The pipeline, one layer each, dependencies pointing down:

* applications: the commands (``python -m tvm_shuffle.compile | tune | report``), :mod:`.api`,
  :mod:`.report` and the engines it compares (:mod:`.peers`);
* packaging: :mod:`.bundle` (the runtime, headers and examples beside ``model.so``);
* tuning: :mod:`.tuning` (MetaSchedule, records, devices behind RPC);
* core: :mod:`.frontends` (import) -> :mod:`.passes` (graph passes) -> :mod:`.schedules` ->
  :mod:`.build` (an executable in memory, and writing it), with :mod:`.targets` and :mod:`.models`;
* runtime: :mod:`.runtime`, :mod:`.bundle_format`, :mod:`.host` (no TVM compiler, no torch).

``pyproject.toml``'s import-linter contract checks that order. ``import
tvm_shuffle`` imports none of them: each name below loads on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> (module, attribute); None: the module itself. ``compile``, ``tune`` and
# ``report`` are the command modules, which are callable as the API functions.
_LAZY = {
    "compile": ("tvm_shuffle.compile", None),
    "tune": ("tvm_shuffle.tune", None),
    "report": ("tvm_shuffle.report", None),
    "load": ("tvm_shuffle.runtime", "load"),
    "Compiled": ("tvm_shuffle.api", "Compiled"),
    "Report": ("tvm_shuffle.report", "Report"),
    "UserError": ("tvm_shuffle.errors", "UserError"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'tvm_shuffle' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [*_LAZY, "__version__"]
