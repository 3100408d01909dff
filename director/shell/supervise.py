"""directord's supervisor: the daemon runs in a child process, started again if it dies.

An exception on one packet never ends the worker (it is counted and the packet
dropped); this covers what is left: a child killed by a signal it was not sent, or
ending on an error it did not expect (exit status EXIT_CRASH).  The hooks stay in
place meanwhile, so the virtual services' traffic is held (or bypassed, as configured)
until the new child binds the queue.  SIGTERM and SIGINT are passed on to the child,
and the supervisor ends with the child's status.  A hang is systemd's watchdog's
business (the child sends WATCHDOG=1 every second; the unit has NotifyAccess=all).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger("directord")

EXIT_CRASH = 70  # EX_SOFTWARE: the daemon ended on an error it did not expect
RESTARTS_ENV = "DIRECTOR_RESTARTS"
RESTART_DELAY = 1.0
MAX_RESTARTS = 10  # within RESTART_WINDOW seconds; then give up and let systemd decide
RESTART_WINDOW = 60.0


def restarts() -> int:
    """How many times the supervisor has started the daemon again (for the metrics)."""
    return int(os.environ.get(RESTARTS_ENV, "0") or 0)


def supervise(run: Callable[[], int]) -> int:
    child = 0
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    recent: list[float] = []
    while True:
        child = os.fork()
        if child == 0:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            os._exit(run())
        _, status = os.waitpid(child, 0)
        if stopping or not _crashed(status):
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1
        now = time.monotonic()
        recent = [t for t in recent if now - t < RESTART_WINDOW] + [now]
        if len(recent) > MAX_RESTARTS:
            log.error("daemon died %d times in %.0f s; giving up", len(recent), RESTART_WINDOW)
            return EXIT_CRASH
        os.environ[RESTARTS_ENV] = str(restarts() + 1)
        log.error("daemon died (%s); starting it again", _describe(status))
        time.sleep(RESTART_DELAY)
        if stopping:
            return 0


def _crashed(status: int) -> bool:
    if os.WIFSIGNALED(status):
        return True
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_CRASH


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
