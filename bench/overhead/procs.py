"""Processes the harness starts: start, wait until serving, measure, stop, never orphan.

Each service runs in its own session (its own process group), with its output in a log
file under `.bench/overhead/logs/`. `Supervisor` stops every service it started, in
reverse order, when the run ends, fails, or is interrupted (Ctrl-C, SIGTERM, SIGHUP):
SIGINT to the leader first (uvicorn and `uv run` shut down cleanly on it, and Orchesity
then stops its embedded Postgres and Redis), then SIGTERM and SIGKILL to its group.
Extra cleanups (the embedded servers, which daemonise out of the group) run after.
"""

from __future__ import annotations

import atexit
import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil


class StartError(RuntimeError):
    """A service did not come up; the message carries the end of its log."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP received: unwind like KeyboardInterrupt so cleanups run."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(port: int, path: str = "/", timeout: float = 2.0) -> int | None:
    """Status of GET path on 127.0.0.1:port, or None if nothing answers HTTP there."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class Service:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    # processes in the tree whose name is here are wrappers (`uv run`), not the server
    wrapper_names: tuple[str, ...] = ("uv",)
    popen: Any = field(default=None, repr=False)

    def start(self) -> None:
        import subprocess

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=self.env, cwd=self.cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float, path: str = "/") -> float:
        """Seconds until the port answers HTTP (any status); StartError if it never does."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if not self.alive():
                raise StartError(f"{self.name} exited with {self.popen.returncode} before serving; "
                                 f"log {self.log_path}:\n{self.log_tail()}")
            if http_status(self.port, path, timeout=1.0) is not None:
                return time.perf_counter() - started
            time.sleep(0.1)
        raise StartError(f"{self.name} did not answer on port {self.port} within {timeout:.0f}s; "
                         f"log {self.log_path}:\n{self.log_tail()}")

    def processes(self) -> list[psutil.Process]:
        """The server's processes: the leader and its descendants, minus wrappers."""
        if not self.alive():
            return []
        try:
            leader = psutil.Process(self.pid)
            procs = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return []
        out = []
        for proc in procs:
            try:
                if proc.name() not in self.wrapper_names:
                    out.append(proc)
            except psutil.Error:
                pass
        return out

    def stop(self, grace: float = 15.0) -> None:
        if self.popen is None:
            return
        try:
            if self.alive():
                _signal(self.pid, signal.SIGINT)
                if not _wait(self.popen, grace):
                    _killpg(self.pid, signal.SIGTERM)
                    if not _wait(self.popen, 5):
                        _killpg(self.pid, signal.SIGKILL)
                        _wait(self.popen, 5)
            # whatever is left in its group (a worker that ignored the leader's exit)
            _killpg(self.pid, signal.SIGKILL)
        finally:
            log = getattr(self, "_log", None)
            if log is not None:
                log.close()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(popen: Any, seconds: float) -> bool:
    import subprocess

    try:
        popen.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


class Supervisor:
    """Owns every service and cleanup of one run; `with Supervisor() as sup: ...`."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self.cleanups: list[tuple[str, Callable[[], None]]] = []
        self._old_handlers: dict[int, Any] = {}
        self._closed = False

    def __enter__(self) -> Self:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a
        # background job of a non-interactive shell inherits SIG_IGN)
        self._old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        atexit.register(self.close)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    def start(self, service: Service) -> Service:
        self.services.append(service)
        service.start()
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self.services:
            self.services.remove(service)

    def on_close(self, name: str, fn: Callable[[], None]) -> None:
        self.cleanups.append((name, fn))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Ctrl-C during cleanup must not leave the rest running
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for service in reversed(self.services):
                try:
                    service.stop()
                except Exception as exc:  # noqa: BLE001 - best effort, go on stopping the rest
                    print(f"warning: stopping {service.name}: {exc}")
            self.services.clear()
            for name, fn in reversed(self.cleanups):
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - best effort, go on stopping the rest
                    print(f"warning: cleanup {name}: {exc}")
            self.cleanups.clear()
        finally:
            signal.signal(signal.SIGINT, previous)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            atexit.unregister(self.close)


def terminate_pid(pid: int | None, expect_name: Iterable[str], sig: int = signal.SIGTERM,
                  grace: float = 10.0) -> bool:
    """Stop one known process (checked by name first); True if it was running."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        name = proc.name()
        if not any(part in name for part in expect_name):
            return False
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except psutil.TimeoutExpired:
            proc.kill()
        return True
    except psutil.Error:
        return False


# --- measuring a running service ---------------------------------------------------------

def tree_rss(procs: Iterable[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def tree_cpu(procs: Iterable[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


class PeakRSS:
    """Samples a service's process tree every `interval` s in a thread; keeps the peak."""

    def __init__(self, sources: Callable[[], list[psutil.Process]], interval: float = 0.05) -> None:
        self.sources, self.interval = sources, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.sources()))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.sources()))

    @property
    def peak_mb(self) -> float:
        return round(self.peak / (1024 * 1024), 1)
