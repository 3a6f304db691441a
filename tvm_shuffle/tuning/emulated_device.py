"""``python -m tvm_shuffle.tuning.emulated_device``: an aarch64 board emulated with qemu-user.

It registers with TVM's RPC tracker like ``python -m tvm.exec.rpc_server`` on
a real board, and serves each session with a small program built against
the aarch64 TVM runtime from the ``manylinux_2_28_aarch64`` wheels
(``rpc_server.cc``), run under ``qemu-aarch64``. It proves the ``--target
arm`` tuning flow, the cross-compiled candidates and their numerics on an
x86 machine (CI): the *timings* are those of an emulator and mean nothing,
and the tuner says so::

    python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190 &
    python -m tvm_shuffle.tuning.emulated_device --tracker 127.0.0.1:9190 --key arm-emu &
    python -m tvm_shuffle.tune --target arm --model shufflenet_v2_x0_5 --input-shape 1,3,32,32 \\
        --trials 8 --rpc-tracker 127.0.0.1:9190 --rpc-key arm-emu

Needs Debian's ``g++-aarch64-linux-gnu`` and ``qemu-user``; the aarch64
runtime is downloaded once (:func:`tvm_shuffle.runtime_libs.fetch_runtime_libs`).
One session at a time, like one board.
"""

from __future__ import annotations

import argparse
import hashlib
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from tvm_shuffle import host, runtime_libs, targets
from tvm_shuffle.errors import UserError, cli_entry
from tvm_shuffle.tuning import rpc

SOURCE = Path(__file__).with_name("rpc_server.cc")
ARCH = "aarch64"
PING_SECONDS = 2.0
# A match key the tracker handed to a client that never connected is
# replaced after this long (TVM's own server waits about as long).
UNUSED_KEY_SECONDS = 6.0
# A tracker started just before us (``rpc_tracker ... &``) refuses connections while it imports TVM;
# like TVM's own rpc_server, keep trying for a minute.
TRACKER_PATIENCE_SECONDS = 60.0


def emulated_spec() -> targets.TargetSpec:
    return targets.get("arm")


def server_program() -> Path:
    """The aarch64 session program next to its runtime libraries, built once per source and TVM version."""
    spec = emulated_spec()
    compiler = targets.require_cross_compiler(spec)
    if shutil.which(spec.emulator[0]) is None:
        raise UserError(f"{spec.emulator[0]} is not installed (apt-get install qemu-user)")
    libs = runtime_libs.fetch_runtime_libs(ARCH)
    tag = hashlib.sha256(SOURCE.read_bytes() + b"".join(p.read_bytes()[:4096] + str(p.stat().st_size).encode()
                                                         for p in libs.values())).hexdigest()[:12]
    directory = host.cache_dir() / "emulated-rpc-server" / tag
    program = directory / "rpc_server"
    if program.exists():
        return program
    directory.mkdir(parents=True, exist_ok=True)
    for name, path in libs.items():
        shutil.copy2(path, directory / name)
    import tvm_ffi.libinfo

    includes = [f"-I{tvm_ffi.libinfo.find_include_path()}", f"-I{tvm_ffi.libinfo.find_dlpack_include_path()}"]
    tmp = directory / "rpc_server.tmp"
    command = [compiler, "-std=c++17", "-O2", *includes, str(SOURCE), f"-L{directory}",
               "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN", "-o", str(tmp)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"building the emulated RPC server failed:\n{done.stderr[-2000:]}")
    tmp.replace(program)
    return program


class Registration:
    """This server's entry at the tracker: a key plus a fresh match key per session."""

    def __init__(self, tracker: rpc.Tracker, port: int):
        from tvm.rpc import base

        self.base = base
        self.key = tracker.key
        self.port = port
        self.sock = socket.create_connection((tracker.host, tracker.port), timeout=tracker.timeout)
        self.sock.settimeout(None)
        self.sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(self.sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise UserError(f"{tracker.address} is not a TVM RPC tracker")
        self._call([base.TrackerCode.UPDATE_INFO, {"key": "server:" + self.key, "addr": [None, port]}])
        self.used_keys: set[str] = set()
        self.matchkey = ""
        self.renew()

    def _call(self, message):
        self.base.sendjson(self.sock, message)
        return self.base.recvjson(self.sock)

    def renew(self) -> None:
        """Offer the device again under a new match key."""
        self.matchkey = self.base.random_key(self.key, cmap=self.used_keys)
        self.used_keys.add(self.matchkey)
        if self._call([self.base.TrackerCode.PUT, self.key, [self.port, self.matchkey], None]) != 0:
            raise UserError("the RPC tracker refused the registration")

    def handed_out(self) -> bool:
        """Has the tracker given our match key to a client (that has not connected yet)?"""
        return self.matchkey not in self._call([self.base.TrackerCode.GET_PENDING_MATCHKEYS])


def accept_client(listener: socket.socket, registration: Registration) -> tuple[socket.socket, float | None]:
    """Wait for the client the tracker sent us; returns the socket after the handshake and its session timeout."""
    base = registration.base
    waited_unused = 0.0
    while True:
        if not select.select([listener], [], [], PING_SECONDS)[0]:
            waited_unused = waited_unused + PING_SECONDS if registration.handed_out() else 0.0
            if waited_unused > UNUSED_KEY_SECONDS:
                registration.renew()
                waited_unused = 0.0
            continue
        conn, _ = listener.accept()
        try:
            if struct.unpack("<i", base.recvall(conn, 4))[0] != base.RPC_MAGIC:
                conn.close()
                continue
            length = struct.unpack("<i", base.recvall(conn, 4))[0]
            words = base.recvall(conn, length).decode("utf-8").split()
        except (OSError, struct.error):
            conn.close()
            continue
        if not words or words[0] != "client:" + registration.matchkey:
            conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
            conn.close()
            continue
        server_key = ("server:" + registration.key).encode("utf-8")
        conn.sendall(struct.pack("<i", base.RPC_CODE_SUCCESS) + struct.pack("<i", len(server_key)) + server_key)
        timeout = next((float(w.split("=", 1)[1]) for w in words[1:] if w.startswith("-timeout=")), None)
        return conn, timeout or None


def run_session(program: Path, conn: socket.socket, timeout: float | None) -> None:
    """Serve one client under qemu; the program gets the connected socket's descriptor."""
    emulator = list(emulated_spec().emulator)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tvm_shuffle_emulated_") as workdir:
        fd = conn.fileno()
        child = subprocess.Popen([*emulator, str(program), str(fd), workdir], pass_fds=(fd,))
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            print(f"emulated device: session over its {timeout:.0f} s limit, stopped", file=sys.stderr, flush=True)
    conn.close()
    print(f"emulated device: session of {time.monotonic() - start:.1f} s ended (exit {child.returncode})",
          file=sys.stderr, flush=True)


def serve(tracker: rpc.Tracker, *, host: str = "127.0.0.1") -> None:
    program = server_program()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1)
    rpc.wait_for_tracker(tracker, TRACKER_PATIENCE_SECONDS,
                         log=lambda message: print(f"emulated device: {message}", file=sys.stderr, flush=True))
    registration = Registration(tracker, listener.getsockname()[1])
    print(f"emulated {ARCH} device (qemu, timings meaningless) registered as {tracker.key!r} "
          f"at {tracker.address}, serving on {host}:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
    while True:
        conn, timeout = accept_client(listener, registration)
        run_session(program, conn, timeout)
        registration.renew()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tvm_shuffle.tuning.emulated_device",
                                     description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the RPC tracker to register with")
    parser.add_argument("--key", default="arm-emu", help="device key clients ask for (default: arm-emu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    parser.add_argument("--build-only", action="store_true", help="build the aarch64 server program and exit")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.build_only:
        print(server_program())
        return 0
    serve(rpc.parse_tracker(args.tracker, args.key, timeout=30.0), host=args.host)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
