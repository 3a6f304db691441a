"""Reaching remote boards and GPUs through TVM's RPC tracker, with timeouts.

TVM's own tracker and server are the device farm::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190          # any machine
    TVM_NUM_THREADS=4 python -m tvm.exec.rpc_server --tracker HOST:9190 --key rpi4   # on each board

(TVM_NUM_THREADS: the board's cores. The server's kernels read it at every
launch; without it they run on half the logical CPUs.)

TVM's client waits forever for a device that never frees up and retries a
refused connection for a minute; here every step has a deadline and ends in
one clear :class:`UserError`. This module imports only ``tvm.rpc``, because
MetaSchedule's runner workers import it to open their sessions.
"""

from __future__ import annotations

import dataclasses
import gc
import socket
import sys
import threading
import time
from typing import Callable

from tvm_shuffle.errors import UserError

DEFAULT_PORT = 9190
DEFAULT_TIMEOUT_S = 60.0  # for an unreachable tracker, a busy device, a session
EMULATION_MARKER = "tvm_shuffle.emulated"  # global function our emulated server registers
# In a runner's error when the session request found no device: the device is gone, not the candidate bad.
DEVICE_GONE = "no device answered"
RETRY_SECONDS = 1.0  # between attempts to reach a tracker that refuses connections


@dataclasses.dataclass(frozen=True)
class Tracker:
    host: str
    port: int
    key: str
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class RemoteDevice:
    """What the pre-flight session learned about the devices under a key."""

    servers: int
    emulated: bool


def parse_tracker(text: str, key: str | None, timeout: float) -> Tracker:
    """``HOST:PORT`` (or ``HOST``, port 9190) and the device key."""
    if not key:
        raise UserError("--rpc-tracker needs --rpc-key KEY: the key the board's rpc_server registered with")
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(DEFAULT_PORT))
    try:
        port_number = int(port)
    except ValueError:
        raise UserError(f"--rpc-tracker {text!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})") from None
    if not host or not 0 < port_number < 65536:
        raise UserError(f"--rpc-tracker {text!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")
    return Tracker(host, port_number, key, timeout)


def check_reachable(tracker: Tracker) -> None:
    """Open and close a TCP connection to the tracker, within its timeout."""
    try:
        with socket.create_connection((tracker.host, tracker.port), timeout=min(tracker.timeout, 10.0)):
            pass
    except OSError as err:
        raise UserError(
            f"cannot reach the RPC tracker at {tracker.address}: {err.strerror or err}. Start one with "
            f"`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {tracker.port}` and register the board "
            f"with `python -m tvm.exec.rpc_server --tracker {tracker.address} --key {tracker.key}`") from None


def wait_for_tracker(tracker: Tracker, patience: float, *, log: Callable[[str], None] | None = None) -> None:
    """:func:`check_reachable`, retried for up to ``patience`` seconds, saying so once.

    A tracker started a moment ago (``rpc_tracker ... &`` then the next
    command) refuses connections for a few seconds while it imports TVM;
    TVM's own ``rpc_server`` retries for a minute for the same reason.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    deadline = time.monotonic() + patience
    said = False
    while True:
        try:
            return check_reachable(tracker)
        except UserError as err:
            if time.monotonic() + RETRY_SECONDS > deadline:
                raise err from None
            if not said:
                log(f"the RPC tracker at {tracker.address} does not answer yet; retrying for up to {patience:.0f} s")
                said = True
        time.sleep(RETRY_SECONDS)


def registered_servers(tracker: Tracker) -> dict[str, int]:
    """Number of servers per key the tracker knows (busy or free)."""
    from tvm import rpc

    session = _with_deadline(lambda: rpc.connect_tracker(tracker.host, tracker.port), tracker.timeout,
                             f"connecting to the RPC tracker at {tracker.address}")
    try:
        summary = session.summary()
    finally:
        session.close()
    counts: dict[str, int] = {}
    for server in summary.get("server_info", []):
        key = server["key"].split(":", 1)[-1]
        counts[key] = counts.get(key, 0) + 1
    return counts


def request_session(tracker: Tracker):
    """An RPC session on a free device under ``tracker.key``, or an error after ``tracker.timeout``.

    A request that runs out of time is withdrawn from the tracker: left
    queued there, it would take the next device that registers (a board
    coming back) and hold it, unused, for a whole session.
    """
    from tvm import rpc

    pending = _PendingRequest()

    def request():
        return pending.start(rpc.connect_tracker(tracker.host, tracker.port)).request(
            tracker.key, priority=1, session_timeout=tracker.timeout)

    return _with_deadline(request, tracker.timeout,
                          f"requesting a device with key {tracker.key!r} from the RPC tracker at {tracker.address}",
                          hint="all devices busy, or the board stopped answering", on_timeout=pending.withdraw)


class _PendingRequest:
    """The tracker connection of one device request, so that the request can be withdrawn.

    The tracker skips a queued request whose connection has closed. TVM's
    client retries a failed request on a new connection, so a withdrawn one
    is also kept from reconnecting.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._client = None
        self._withdrawn = False

    def start(self, client):
        with self._lock:
            self._client = client
            if self._withdrawn:
                self._stop(client)
        return client

    def withdraw(self) -> None:
        with self._lock:
            self._withdrawn = True
            if self._client is not None:
                self._stop(self._client)

    @staticmethod
    def _stop(client) -> None:
        def refuse():
            raise OSError("device request withdrawn after its timeout")

        client._connect = refuse  # TrackerSession.request reconnects through this on every retry
        sock = client._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked receive; the tracker sees the close
            except OSError:
                pass


def probe(tracker: Tracker, device_type: str) -> RemoteDevice:
    """Check the tracker (waiting up to its timeout for it to start), the key and one session before tuning."""
    wait_for_tracker(tracker, tracker.timeout)
    servers = registered_servers(tracker)
    if not servers.get(tracker.key):
        known = ", ".join(f"{k} ({n})" for k, n in sorted(servers.items())) or "none"
        raise UserError(
            f"no device registered with key {tracker.key!r} at the RPC tracker {tracker.address} "
            f"(registered keys: {known}). On the board run: "
            f"python -m tvm.exec.rpc_server --tracker {tracker.address} --key {tracker.key}")
    session = request_session(tracker)
    try:
        exists = session.device(device_type, 0).exist
        emulated = _has_function(session, EMULATION_MARKER)
    finally:
        # Released now, not whenever the collector gets to it: a board serves one session at a time,
        # and the first candidate's request would wait for this one (and give up after the timeout).
        session = None
        gc.collect()
    if not exists:
        raise UserError(f"the device with key {tracker.key!r} has no {device_type} device; check --target")
    return RemoteDevice(servers=servers[tracker.key], emulated=emulated)


def _has_function(session, name: str) -> bool:
    try:
        session.get_function(name)
        return True
    except Exception:  # RPC raises a generic error for a missing remote function
        return False


def device_answers(tracker: Tracker) -> bool:
    """Whether a device under ``tracker.key`` takes a session within the timeout; the session is released at once."""
    try:
        session = request_session(tracker)
    except UserError:
        return False
    del session
    gc.collect()  # the session's objects refer to each other; collected, the device is free again
    return True


# Runner worker process: when each request for a device last found none (tracker address and key -> time).
_NO_DEVICE_SINCE: dict[tuple[str, int, str], float] = {}


def create_session(rpc_config):
    """MetaSchedule ``f_create_session`` for ``RPCRunner``: the tracker request, with a deadline.

    Runs in the runner's worker process. A request that finds no device
    raises an error holding :data:`DEVICE_GONE`; the requests that follow
    within the timeout fail at once, so a batch whose device died ends after
    one timeout rather than one per candidate.
    """
    tracker = Tracker(rpc_config.tracker_host, int(rpc_config.tracker_port), rpc_config.tracker_key,
                      float(rpc_config.session_timeout_sec))
    key = (tracker.host, tracker.port, tracker.key)
    since = _NO_DEVICE_SINCE.get(key)
    if since is not None and time.monotonic() - since < tracker.timeout:
        raise UserError(f"{DEVICE_GONE} with key {tracker.key!r} at {tracker.address} "
                        f"({time.monotonic() - since:.0f} s ago, none within {tracker.timeout:.0f} s)")
    try:
        session = request_session(tracker)
    except UserError as err:
        _NO_DEVICE_SINCE[key] = time.monotonic()
        raise UserError(f"{DEVICE_GONE}: {err}") from None
    _NO_DEVICE_SINCE.pop(key, None)
    return session


def _with_deadline(fn, timeout: float, what: str, *, hint: str = "", on_timeout=None):
    """Run a blocking client call on a daemon thread; a UserError if it fails or outlasts ``timeout``.

    ``on_timeout`` is called when the call is abandoned, to stop what it left waiting.
    """
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if on_timeout is not None:
            on_timeout()
        raise UserError(f"{what}: no answer within {timeout:.0f} s" + (f" ({hint})" if hint else ""))
    if "error" in outcome:
        err = outcome["error"]
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"{what} failed: {detail}")
    return outcome["value"]
