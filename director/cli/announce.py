"""``dirctl announce``: a process for ExaBGP's ``process`` stanza that announces the VIPs
this director serves and withdraws those it does not.

ExaBGP runs it (``run /usr/local/bin/dirctl --socket S announce --vip V;``) and reads
its standard output, one API command a line.  Every ``--interval`` seconds it asks the
daemon for its tables on the control socket (``list``, as ``dirctl list --json``);
``director.ctl.announce`` decides from the answer.  A daemon that does not answer within
``--timeout`` (dead, hung, its socket gone) serves nothing, so the VIPs are withdrawn
and the router's ECMP route loses this director within one interval.  When ExaBGP goes
(its end of our standard input closes) the process ends; ExaBGP's own death closes the
BGP session, and the router drops the routes then.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from typing import Annotated, Any, TextIO

import typer

from director.ctl import protocol
from director.ctl.announce import Announcer, served_vips
from director.model.config import ConfigError


def check_once(socket_path: str, timeout: float) -> frozenset[str]:
    """The VIPs the daemon at ``socket_path`` serves now; none if it does not answer."""
    try:
        snapshot: Any = protocol.request(socket_path, "list", {}, timeout)
    except (protocol.DaemonUnreachable, protocol.DaemonFailed, ConfigError, OSError):
        return frozenset()
    return served_vips(snapshot) if isinstance(snapshot, dict) else frozenset()


def _emit(out: TextIO, lines: list[str]) -> None:
    for line in lines:
        out.write(line + "\n")
    out.flush()


def _watch_stdin(stop: threading.Event) -> None:
    """ExaBGP may write to us (acknowledgements); read and drop it, and stop at EOF."""
    try:
        fd = sys.stdin.fileno()
        while os.read(fd, 65536):
            pass
    except (OSError, ValueError, AttributeError):
        pass
    stop.set()


def loop(
    socket_path: str,
    announcer: Announcer,
    interval: float,
    timeout: float,
    stop: threading.Event,
    out: TextIO,
) -> None:
    """Check, print what changed, wait; until ``stop`` is set."""
    while not stop.is_set():
        _emit(out, announcer.step(check_once(socket_path, timeout)))
        stop.wait(interval)


def _vip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"--vip {text!r}: not an IP address") from None


def announce(
    ctx: typer.Context,
    vip: Annotated[list[str], typer.Option("--vip", help="a VIP to announce (repeatable)")],
    interval: Annotated[float, typer.Option(help="seconds between checks")] = 0.5,
    timeout: Annotated[float, typer.Option(help="seconds the daemon has to answer")] = 1.0,
    rise: Annotated[int, typer.Option(help="served checks in a row before announcing")] = 1,
    fall: Annotated[int, typer.Option(help="failed checks in a row before withdrawing")] = 1,
    next_hop: Annotated[str, typer.Option(help="the routes' next hop")] = "self",
) -> None:
    """Announce each VIP over ExaBGP's API while this director serves it (for
    ExaBGP's `process` stanza; prints `announce route VIP/32 next-hop self` and
    `withdraw route ...` lines)."""
    vips = [_vip(v) for v in vip]
    if not interval > 0 or not timeout > 0:
        raise ConfigError("--interval and --timeout must be above 0")
    if rise < 1 or fall < 1:
        raise ConfigError("--rise and --fall must be at least 1")
    if next_hop != "self":
        next_hop = _vip(next_hop)
    root = ctx.find_root().obj
    socket_path = str(getattr(root, "socket", protocol.DEFAULT_SOCKET))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    announcer = Announcer(list(dict.fromkeys(vips)), rise=rise, fall=fall, next_hop=next_hop)
    try:
        loop(socket_path, announcer, interval, timeout, stop, sys.stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        return
    # Stopped (SIGTERM): say so to ExaBGP, which may be going on without us.
    try:
        _emit(sys.stdout, announcer.withdraw_all())
    except BrokenPipeError:
        return
