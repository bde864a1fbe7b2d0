"""Starting, watching and stopping server processes by PID, and finding free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from .errors import ServiceError

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Some servers cannot be told to pick a port themselves and report it, so we pick one; the
    race with another process taking it is narrow and shows up as a clear start failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ProcessRef:
    """A process we started, identified by PID and start time so a reused PID is never killed."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        """Capture the identity of a live process."""
        return cls(pid=pid, create_time=psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """Return the live process, or None if it exited or the PID now names another process."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def alive(self) -> bool:
        """Tell whether the process is still running."""
        return self.process() is not None


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ProcessRef:
    """Start a server in the background in its own session, its output going to a log file.

    A new session keeps the server alive after the starting process exits and keeps terminal
    signals (Ctrl-C in `nox`) from reaching it; output goes to a file because a server that
    writes to an unread pipe eventually blocks.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log_path, "ab") as log:
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                user=user,
            )
        except OSError as exc:
            raise ServiceError(f"cannot run {argv[0]}: {exc}") from exc
    return ProcessRef.of(popen.pid)


def tail(path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    probe: Callable[[], T],
    *,
    what: str,
    timeout: float,
    proc: ProcessRef | None = None,
    log_path: Path | None = None,
    interval: float = 0.2,
) -> T:
    """Call `probe` until it returns without raising, and return its result.

    Fails early, with the server's log, if the watched process exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            return probe()
        except Exception as exc:  # a probe fails in many client-specific ways
            last = exc
        if proc is not None and not proc.alive():
            log = tail(log_path) if log_path else ""
            raise ServiceError(f"{what}: the server process exited during start-up\n{log}")
        if time.monotonic() > deadline:
            log = tail(log_path) if log_path else ""
            raise ServiceError(f"{what}: not ready after {timeout:.0f} s ({last!r})\n{log}")
        time.sleep(interval)


def tree(ref: ProcessRef) -> list[psutil.Process]:
    """Return the process and all its descendants, root first."""
    proc = ref.process()
    if proc is None:
        return []
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [proc]


def stop(ref: ProcessRef, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Stop a process we started and every descendant of it, escalating to SIGKILL.

    Only processes descending from the recorded PID (with the recorded start time) are touched.
    """
    procs = tree(ref)
    if not procs:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        procs[0].send_signal(sig)
    _, alive = psutil.wait_procs(procs[:1], timeout=timeout)
    # Children a clean shutdown left behind, and anything still alive, are killed outright.
    for proc in alive + procs[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def rss_bytes(refs: Sequence[ProcessRef]) -> int:
    """Return the resident memory of the given processes and their descendants."""
    total = 0
    seen: set[int] = set()
    for ref in refs:
        for proc in tree(ref):
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
    return total


def listening_addresses(refs: Sequence[ProcessRef]) -> list[tuple[str, int]]:
    """Return every (address, port) the processes and their descendants listen on."""
    pids = {proc.pid for ref in refs for proc in tree(ref)}
    return [
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections(kind="inet")
        if conn.pid in pids and conn.status == psutil.CONN_LISTEN and conn.laddr
    ]


def is_loopback(address: str) -> bool:
    """Tell whether a listening address is reachable from this machine only."""
    return address.startswith("127.") or address in {"::1", "::ffff:127.0.0.1"}
