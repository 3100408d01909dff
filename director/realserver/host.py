"""The thin shell of ``dirctl realserver``: read the host, carry out planned actions.

Links and addresses go through pyroute2 (netlink), sysctls through ``/proc/sys``
(which shows the calling process's network namespace), the TUN device through
``/dev/net/tun`` and the decapsulator is a background process of its own.

What ``up`` did is kept in ``<root>/netns-<cookie>/state.json`` (``root`` defaults to
``/run/director-realserver``).  The network namespace's cookie (``SO_NETNS_COOKIE``)
is never reused by the kernel, so hosts that share ``/run`` (namespaces under one
kernel) keep separate records; the file is rewritten after every action, so an
interrupted ``up`` can still be undone by ``down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from director.realserver import decap, plan
from director.shell.persist import atomic_write

if TYPE_CHECKING:
    from pyroute2 import IPRoute

DEFAULT_STATE_ROOT = Path("/run/director-realserver")
STATE_FILE = "state.json"
DECAP_LOG = "decap.log"
DECAP_MODULE = "director.realserver.decap"
SO_NETNS_COOKIE = 71
SYSCTL_ROOT = Path("/proc/sys")
SYSCTL_KEYS = ("arp_ignore", "arp_announce", "rp_filter")
MODULES = ("dummy", "ipip")
IFF_UP = 0x1


class HostError(RuntimeError):
    """The host refused a change (netlink, /proc/sys, the decapsulator)."""


# --- where the record lives -----------------------------------------------------------


def netns_key() -> str:
    """A name for this network namespace that the kernel never gives another."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
            cookie = int.from_bytes(raw, "little")
            return f"netns-{cookie}"
        except OSError:  # before Linux 5.14: the namespace inode, reusable but close
            return f"netns-ino{os.stat('/proc/self/ns/net').st_ino}"


def state_dir(root: Path = DEFAULT_STATE_ROOT) -> Path:
    return root / netns_key()


def load_state(directory: Path) -> plan.State | None:
    try:
        data = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise HostError(f"cannot read {directory / STATE_FILE}: {err}") from None
    try:
        return plan.State.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise HostError(f"{directory / STATE_FILE} is damaged: {err!r}") from None


def save_state(directory: Path, state: plan.State) -> None:
    """Write the record atomically (temporary file, fsync, rename)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(directory / STATE_FILE, json.dumps(state.to_json(), indent=1) + "\n")


def remove_state(directory: Path) -> None:
    for name in (STATE_FILE, DECAP_LOG):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


# --- reading the host -------------------------------------------------------------------


@contextlib.contextmanager
def _ipr() -> Iterator[IPRoute]:
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _links(ipr: IPRoute) -> tuple[dict[str, plan.Link], dict[int, str]]:
    links: dict[str, plan.Link] = {}
    names: dict[int, str] = {}
    for msg in ipr.get_links():
        name = msg.get_attr("IFLA_IFNAME")
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        links[name] = plan.Link(kind=kind, up=bool(msg["flags"] & IFF_UP))
        names[msg["index"]] = name
    return links, names


def read_sysctl(path: str) -> int | None:
    try:
        return int((SYSCTL_ROOT / path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def write_sysctl(path: str, value: int) -> None:
    try:
        (SYSCTL_ROOT / path).write_text(f"{value}\n")
    except OSError as err:
        raise HostError(f"sysctl {path.replace('/', '.')}={value}: {err.strerror}") from None


def decap_running(pid: int | None, tun: str | None = None) -> bool:
    """Whether ``pid`` is a live decapsulator (of ``tun``), not some reused pid."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    if DECAP_MODULE.encode() not in cmdline:
        return False
    return tun is None or tun.encode() in cmdline


def read_host(state: plan.State | None) -> plan.Host:
    with _ipr() as ipr:
        links, names = _links(ipr)
        addrs = frozenset(
            (names.get(msg["index"], "?"), msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
            for family in (socket.AF_INET, socket.AF_INET6)
            for msg in ipr.get_addr(family=family)
        )
    sysctls: dict[str, int] = {}
    for dev in ("all", *links):
        for key in SYSCTL_KEYS:
            value = read_sysctl(plan.conf(dev, key))
            if value is not None:
                sysctls[plan.conf(dev, key)] = value
    modules = frozenset(m for m in MODULES if Path(f"/sys/module/{m}").is_dir())
    alive = state is not None and decap_running(state.decap_pid, state.vip_dev)
    return plan.Host(links=links, addrs=addrs, sysctls=sysctls, modules=modules, decap_alive=alive)


# --- changing it ----------------------------------------------------------------------


def apply(action: plan.Action, directory: Path) -> int | None:
    """Carry out one action; return the pid of a started decapsulator."""
    try:
        return _apply(action, directory)
    except OSError as err:  # pyroute2's NetlinkError is an OSError too
        raise HostError(f"{plan.describe(action)}: {err}") from None


def _apply(action: plan.Action, directory: Path) -> int | None:
    match action:
        case plan.CreateLink(name=name, kind="tun"):
            os.close(decap.open_tun(name, persist=True))
        case plan.CreateLink(name=name, kind=kind):
            with _ipr() as ipr:
                ipr.link("add", ifname=name, kind=kind)
        case plan.DeleteLink(name=name):
            with _ipr() as ipr:
                ipr.link("del", index=_index(ipr, name))
        case plan.SetLink(name=name, up=up):
            with _ipr() as ipr:
                ipr.link("set", index=_index(ipr, name), state="up" if up else "down")
        case plan.AddAddress(dev=dev, addr=addr):
            with _ipr() as ipr:
                ipr.addr(
                    "add", index=_index(ipr, dev), address=addr, prefixlen=plan.prefixlen(addr)
                )
        case plan.DeleteAddress(dev=dev, addr=addr):
            with _ipr() as ipr:
                ipr.addr(
                    "del", index=_index(ipr, dev), address=addr, prefixlen=plan.prefixlen(addr)
                )
        case plan.WriteSysctl(path=path, value=value) | plan.RestoreSysctl(path=path, value=value):
            write_sysctl(path, value)
        case plan.StartDecap(tun=tun, vips=vips, tun_type=tun_type, tun_port=tun_port):
            return start_decap(
                tun, vips, directory / DECAP_LOG, tun_type=tun_type, tun_port=tun_port
            )
        case plan.StopDecap(pid=pid):
            stop_decap(pid)
        case _:
            raise TypeError(f"unknown action {action!r}")
    return None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise HostError(f"no device {name}")
    index: int = found[0]
    return index


def start_decap(
    tun: str,
    vips: tuple[str, ...],
    log: Path,
    timeout: float = 10.0,
    tun_type: str = "ipip",
    tun_port: int = 0,
) -> int:
    """Start the decapsulator in a session of its own; wait for its ``ready``.  GUE
    (``tun_port``) and GRE come through it too, beside IPIP."""
    argv = [sys.executable, "-m", DECAP_MODULE, "--tun", tun]
    for vip in vips:
        argv += ["--vip", vip]
    if tun_type == "gue":
        argv += ["--gue-port", str(tun_port)]
    elif tun_type == "gre":
        argv.append("--gre")
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    assert proc.stdout is not None
    with proc.stdout:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise HostError(f"the decapsulator did not start: {' '.join(tail) or 'no output'}")
    # Not waited for: it outlives dirctl, and init (or the caller's reaper) reaps it.
    proc.returncode = 0  # keeps Popen.__del__ from warning about a running child
    return proc.pid


def stop_decap(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM the decapsulator, then SIGKILL it if it is still there after ``timeout``."""
    if not decap_running(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while decap_running(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


def run_actions(
    state: plan.State, actions: list[plan.Action], directory: Path
) -> Iterator[tuple[plan.Action, plan.State]]:
    """Apply ``actions`` in order, saving the record after each; yield as they are done."""
    for action in actions:
        pid = apply(action, directory)
        state = plan.recorded(state, action, pid)
        save_state(directory, state)
        yield action, state


def status(state: plan.State | None, host: plan.Host) -> dict[str, Any]:
    """What ``dirctl realserver status`` shows, as data."""
    if state is None:
        return {"up": False}
    where = {addr: dev for dev, addr in host.addrs}
    return {
        "up": True,
        "method": state.method,
        "mode": state.mode,
        "vip_dev": state.vip_dev,
        "vips": {vip: where.get(vip) for vip in state.vips},
        "created_links": state.created_links,
        "raised_links": state.raised_links,
        "sysctls": {
            path.replace("/", "."): {"was": old, "now": host.sysctls.get(path)}
            for path, (old, _ours) in state.sysctls.items()
        },
        "decap": None
        if state.mode != "tun-userspace"
        else {"pid": state.decap_pid, "running": host.decap_alive},
    }
