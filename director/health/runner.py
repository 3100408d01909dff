"""The health thread: an asyncio loop of its own that runs every check on its
interval and hands results to the daemon's loop.

The daemon's loop owns all core state; this thread never touches it.  Results go
through a queue, and one byte on a socket pair wakes the daemon's selector
(``fileno``/``drain``).  ``set_targets`` and ``run_command`` may be called from the
daemon's thread at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import shlex
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from director.health.checkers import Target, run_check

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0  # quorum_up / quorum_down commands


@dataclass(frozen=True, slots=True)
class Result:
    key: Any
    target: Target  # the target that was checked: stale results are recognised
    ok: bool
    reason: str
    at: float  # time.monotonic()


class Runner:
    def __init__(self) -> None:
        self.results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: dict[Any, tuple[Target, asyncio.Task[None]]] = {}
        self._ready = threading.Event()

    # -- the daemon's side ---------------------------------------------------------

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="health", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=5.0)
        self._wake_r.close()
        self._wake_w.close()

    def set_targets(self, targets: Mapping[Any, Target]) -> None:
        """Check exactly these from now on (unchanged ones keep their rhythm)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._sync, dict(targets))

    def run_command(self, command: str) -> None:
        """Run a quorum command in the background (no shell), killed at its timeout."""
        if self._loop is not None and command.strip():
            self._loop.call_soon_threadsafe(lambda: self._spawn(command))

    def drain(self) -> list[Result]:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        out: list[Result] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.results.get_nowait())
        return out

    # -- the health thread ---------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for _, task in self._tasks.values():
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _sync(self, targets: dict[Any, Target]) -> None:
        for key in list(self._tasks):
            current, task = self._tasks[key]
            if targets.get(key) != current:
                task.cancel()
                del self._tasks[key]
        for key, target in targets.items():
            if key not in self._tasks:
                task = asyncio.get_running_loop().create_task(self._every(key, target))
                self._tasks[key] = (target, task)

    async def _every(self, key: Any, target: Target) -> None:
        check = target.check
        if check.warmup:
            await asyncio.sleep(random.uniform(0, check.warmup))
        while True:
            started = time.monotonic()
            try:
                ok, reason = await run_check(target)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in a checker must not end the loop
                log.exception("health check of %s:%d failed", target.addr, target.port)
                ok, reason = False, f"internal error: {exc}"
            self.results.put(Result(key, target, ok, reason, time.monotonic()))
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"\0")
            await asyncio.sleep(max(0.0, check.interval - (time.monotonic() - started)))

    def _spawn(self, command: str) -> None:
        asyncio.get_running_loop().create_task(self._command(command))

    async def _command(self, command: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            log.warning("command %r: %s", command, exc)
            return
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                code = await proc.wait()
            log.info("command %r exited %d", command, code)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.warning("command %r killed after %gs", command, COMMAND_TIMEOUT)
