"""The machine this process runs on: its architecture, its cores, and the thread policy for TVM.

One place for both facts every step needs:

* :func:`arch` names the CPU architecture the way bundles and wheels do
  (``x86_64``, ``aarch64``), whatever ``platform.machine()`` calls it.
* TVM kernels run on one thread per physical core (:func:`default_threads`).
  TVM's own default is half the logical CPUs on x86, because it assumes two
  hyper-threads per core; on a machine without hyper-threading (most cloud
  VMs) that leaves half the cores idle. :func:`export_thread_settings` puts
  the count where TVM reads it and leaves the threads unpinned.

Imports nothing beyond the standard library: deployed apps load it.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Iterator

_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
THREADS_VARIABLE = "TVM_NUM_THREADS"
BIND_VARIABLE = "TVM_BIND_THREADS"


def arch() -> str:
    """``x86_64`` or ``aarch64`` (or whatever else the kernel reports, lower-cased)."""
    machine = platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


def cache_dir() -> Path:
    """Where tvm_shuffle keeps what it downloads or builds once: ``$XDG_CACHE_HOME/tvm_shuffle`` (``~/.cache/...``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tvm_shuffle"


def physical_cores() -> int:
    """Cores this process may run on, each hyper-threaded sibling counted once."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:  # no sysfs topology (containers, other OSes): one core per CPU
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """``TVM_NUM_THREADS`` when it is set, else :func:`physical_cores`."""
    try:
        return max(1, int(os.environ[THREADS_VARIABLE]))
    except (KeyError, ValueError):
        return physical_cores()


def export_thread_settings(threads: int) -> None:
    """Put ``threads`` in TVM_NUM_THREADS and leave TVM's threads unpinned (TVM_BIND_THREADS=0, unless set).

    Sizing the pool is not enough: each kernel launch asks TVM's
    ``MaxConcurrency()``, which reads TVM_NUM_THREADS and without it counts
    the logical CPUs and halves them, so on a 2-vCPU VM every kernel would
    run on one thread of a pool of two. TVM pins each worker to a core, and
    a pinned worker waits whenever another process is busy on its core;
    unpinned, the OS moves it. Both variables are read when the pool starts,
    so this runs before TVM's runtime configures it.
    """
    os.environ[THREADS_VARIABLE] = str(threads)
    os.environ.setdefault(BIND_VARIABLE, "0")


@contextlib.contextmanager
def tvm_threads(threads: int) -> Iterator[None]:
    """:func:`export_thread_settings` for the duration of a block, then the environment as it was."""
    saved = {name: os.environ.get(name) for name in (THREADS_VARIABLE, BIND_VARIABLE)}
    export_thread_settings(threads)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


__all__ = ["arch", "cache_dir", "physical_cores", "default_threads", "export_thread_settings", "tvm_threads",
           "THREADS_VARIABLE"]
