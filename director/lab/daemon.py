"""Run the real ``directord`` inside a lab's director namespace, and ``dirctl`` against it.

The daemon's control socket, rules file, state directory and config live in a
work directory of the caller's (a temporary one in tests and demos).  The daemon is
given a ``NOTIFY_SOCKET`` of our own, as systemd would, so that start-up waits for
its ``READY=1`` and the messages it sends (READY, STOPPING, WATCHDOG) can be checked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from director.lab.topology import Lab

BIN = Path(sys.executable).parent


def venv_program(name: str) -> str:
    """This interpreter's console script ``name`` (``directord``, ``dirctl``)."""
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the project (make venv)")
    return str(path)


class DaemonError(RuntimeError):
    """The daemon did not start, or did not stop as it should."""


class Daemon:
    """One ``directord`` process in ``lab.director``, with its own files under ``workdir``."""

    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.lab = lab
        self.env = dict(env or {})  # over the caller's own environment (e.g. PATH)
        self.workdir = workdir
        self.socket_path = workdir / "control.sock"
        self.rules_path = workdir / "rules"
        self.state_dir = workdir / "state"
        self.config_path = workdir / "director.toml"
        self.notify_path = workdir / "notify.sock"
        self.log_path = workdir / "directord.log"
        self.extra_args = tuple(extra_args)
        self.notifications: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None
        self._reader: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and wait until it says READY=1 (or its socket answers)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        if not self.config_path.exists():
            self.config_path.write_text("# lab: all settings on the command line\n")
        self._open_notify()
        argv = [
            venv_program("directord"),
            "--control-socket",
            str(self.socket_path),
            "--rules",
            str(self.rules_path),
            "--state-dir",
            str(self.state_dir),
            "--config",
            str(self.config_path),
            *self.extra_args,
        ]
        env = dict(
            os.environ, **self.env, NOTIFY_SOCKET=str(self.notify_path), WATCHDOG_USEC="2000000"
        )
        env.pop("WATCHDOG_PID", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.lab.exec_argv(self.lab.director, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        self._wait_ready(timeout)

    def _open_notify(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.notify_path))
        sock.settimeout(0.2)
        self._notify = sock
        self.notifications = []
        self._reader = threading.Thread(target=self._read_notify, args=(sock,), daemon=True)
        self._reader.start()

    def _read_notify(self, sock: socket.socket) -> None:
        while self._notify is sock:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.notifications.extend(data.decode(errors="replace").split("\n"))

    def answers(self) -> bool:
        """Whether a daemon accepts connections on the control socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                return False
            return True

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        answered_at: float | None = None
        while "READY=1" not in self.notifications:
            if self.proc.poll() is not None:
                raise DaemonError(f"directord exited {self.proc.returncode}:\n{self.log()}")
            now = time.monotonic()
            if now > deadline:
                self.kill()
                raise DaemonError(f"directord not ready in {timeout:.0f} s:\n{self.log()}")
            # A daemon that answers but never says READY is still usable here; the
            # integration tests check READY separately.
            if answered_at is None and self.answers():
                answered_at = now
            if answered_at is not None and now - answered_at > 2.0:
                return
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait for the exit, and return its status (the daemon should give 0)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DaemonError(f"directord ignored SIGTERM for {timeout:.0f} s") from None
        code = self.proc.returncode
        self._close_notify()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_notify()

    def _close_notify(self) -> None:
        sock, self._notify = self._notify, None
        if self._reader is not None:
            self._reader.join(timeout=1.0)
            self._reader = None
        if sock is not None:
            sock.close()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # -- operating it -------------------------------------------------------------

    def dirctl(
        self, *args: str, input: str | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``dirctl --socket S ARGS`` in the director namespace; never raises on status."""
        argv = [venv_program("dirctl"), "--socket", str(self.socket_path), *args]
        return subprocess.run(
            self.lab.exec_argv(self.lab.director, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
