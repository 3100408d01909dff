"""``dirctl top``: the live view operators get from ``watch ipvsadm -Ln --rate``, better.

Every second it asks the daemon for a snapshot and draws one table: the virtual
services, busiest first, each followed by its real servers, busiest first, with the
estimator's rates, the active and inactive connections and the connections since the
last ``zero``.  ``q`` or Ctrl-C quits; ``--once`` / ``--iterations N`` draw a fixed
number of frames without taking over the terminal (for scripts and tests).

``render`` is a pure function of a snapshot; ``run`` is the loop around it.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Mapping
from typing import TextIO

from director.ctl.listing import addr_port, largenum
from director.ctl.snapshot import DestDict, ServiceDict, Snapshot, StatsDict

CLEAR = "\x1b[H\x1b[2J"
_NAME_WIDTH = 34


def _busy(stats: StatsDict) -> tuple[int, int, int]:
    """Sort key, busiest first: connections, then packets, then bytes per second."""
    return (
        stats.get("cps", 0),
        stats.get("inpps", 0) + stats.get("outpps", 0),
        stats.get("inbps", 0) + stats.get("outbps", 0),
    )


def _service_name(svc: ServiceDict) -> str:
    if svc["protocol"] == "FWM":
        return f"FWM  {svc['fwmark']}" + (" IPv6" if svc["addr"] else "")
    return f"{svc['protocol']:<4} {addr_port(svc['addr'], svc['port'])}"


def _row(name: str, stats: StatsDict, active: int, inactive: int) -> str:
    values: Mapping[str, int] = stats  # type: ignore[assignment]
    rates = "".join(
        largenum(values.get(key, 0)) for key in ("cps", "inpps", "outpps", "inbps", "outbps")
    )
    return (
        f"{name[:_NAME_WIDTH]:<{_NAME_WIDTH}}{rates}"
        f"{active:>10} {inactive:>9}{largenum(values.get('conns', 0))}"
    )


HEADER = (
    f"{'Prot LocalAddress:Port':<{_NAME_WIDTH}}"
    f"{'CPS':>9}{'InPPS':>9}{'OutPPS':>9}{'InBPS':>9}{'OutBPS':>9}"
    f"{'ActConn':>10} {'InActConn':>9}{'Conns':>9}"
)


def render(snapshot: Snapshot, clock: str = "") -> str:
    """One frame: a summary line, the header and the services, busiest first."""
    totals = snapshot["totals"]
    entries = snapshot.get("conn_entries", 0)
    lines = [
        f"director top {clock}  services {len(snapshot['services'])}  "
        f"connection entries {entries}  "
        f"total {totals.get('cps', 0)} conn/s, "
        f"{totals.get('inpps', 0) + totals.get('outpps', 0)} packets/s, "
        f"{totals.get('inbps', 0) + totals.get('outbps', 0)} bytes/s".rstrip(),
        "",
        HEADER,
        f"{'  -> RemoteAddress:Port':<{_NAME_WIDTH}}",
    ]
    for svc in sorted(snapshot["services"], key=lambda s: _busy(s["stats"]), reverse=True):
        dests: list[DestDict] = sorted(svc["dests"], key=lambda d: _busy(d["stats"]), reverse=True)
        active = sum(d["activeconns"] for d in dests)
        inactive = sum(d["inactconns"] for d in dests)
        lines.append(_row(_service_name(svc), svc["stats"], active, inactive))
        for dest in dests:
            name = f"  -> {addr_port(dest['addr'], dest['port'])}"
            lines.append(_row(name, dest["stats"], dest["activeconns"], dest["inactconns"]))
    return "".join(f"{line}\n" for line in lines)


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[Callable[[float], str]]:
    """Single keypresses from a terminal (cbreak mode, restored after); elsewhere a
    plain wait that never sees a key."""
    if not stream.isatty():

        def wait(seconds: float) -> str:
            time.sleep(seconds)
            return ""

        yield wait
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def key(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 16).decode(errors="replace") if ready else ""

    try:
        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(
    fetch: Callable[[], Snapshot],
    *,
    interval: float = 1.0,
    iterations: int | None = None,
    out: TextIO = sys.stdout,
    keys: TextIO = sys.stdin,
) -> None:
    """Draw a frame every ``interval`` seconds until ``q``, Ctrl-C or ``iterations``."""
    live = iterations is None and out.isatty()
    with _keys(keys) if iterations is None else _no_keys() as wait:
        frame = 0
        try:
            while True:
                text = render(fetch(), time.strftime("%H:%M:%S"))
                out.write((CLEAR if live else "") + text)
                out.flush()
                frame += 1
                if iterations is not None and frame >= iterations:
                    return
                if "q" in wait(interval).lower():
                    return
        except KeyboardInterrupt:
            return


@contextlib.contextmanager
def _no_keys() -> Iterator[Callable[[float], str]]:
    def wait(seconds: float) -> str:
        time.sleep(seconds)
        return ""

    yield wait
