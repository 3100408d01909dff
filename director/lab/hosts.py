"""What the labs of several directors (director/lab/ecmp.py, director/lab/ha.py) build
and run their hosts with: namespaces, ports of a bridge, processes of their own
session with a log file, and their end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from director.lab import topology


def create(names: Iterable[str]) -> None:
    """The network namespaces ``names``, each with its loopback up."""
    from pyroute2 import NetNS, netns

    names = list(names)
    for name in names:
        netns.create(name)
    for name in names:
        with NetNS(name) as ns:
            topology._up(ns, "lo")


def bridge_port(ns: object, bridge: str, ifname: str, peer_ns: str, peer_if: str = "eth0") -> None:
    """A veth ``ifname`` in ``ns``'s ``bridge``, its peer ``peer_if`` in ``peer_ns``."""
    from pyroute2 import NetNS

    assert isinstance(ns, NetNS)
    ns.link("add", ifname=ifname, kind="veth", peer={"ifname": peer_if, "net_ns_fd": peer_ns})
    port = ns.link_lookup(ifname=ifname)[0]
    ns.link("set", index=port, master=ns.link_lookup(ifname=bridge)[0])
    ns.link("set", index=port, state="up")


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
          ) -> subprocess.Popen[bytes]:  # fmt: skip
    """``argv`` (already wrapped for its namespace) in a session of its own, its
    output appended to ``log``."""
    out = open(log, "ab")  # noqa: SIM115 - the child's until it ends
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=None if env is None else dict(os.environ, **env),
            start_new_session=True,
        )
    finally:
        out.close()


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 5.0) -> None:  # fmt: skip
    """End a process of the lab and its whole session (SIGKILL after ``timeout``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def descendants(pid: int) -> list[int]:
    """``pid``'s children, theirs, and so on (from /proc: no procps needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL to each of ``pids`` at once (one already gone is passed over)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tail(path: Path, size: int = 2000) -> str:
    """The end of a log file ("" when there is none yet)."""
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""
