"""Build and tear down the labs of SPEC §3 and §4 in network namespaces.

The NAT lab (``kind="nat"``, the seed example of §4):

::

    client (203.0.113.10/24)                    rs1 (198.18.0.2/24, gw .1)
       eth0 ──veth── ext0  director  br0 ─┬─ rs1 ──veth── eth0
                     203.0.113.1/24      │ 198.18.0.1/24
                     203.0.113.5/32 VIP  └─ rs2 ──veth── eth0
                     ip_forward=1           rs2 (198.18.0.3/24, gw .1)

The DR lab (``kind="dr"``) is the same picture with rs1 and rs2 prepared by
``dirctl realserver up --method dr`` (the VIP on their ``lo``, ARP for it silenced).
Their default route stays via the director, which forwards their replies by plain
kernel routing (not NFQUEUE: the replies' source is the VIP, not a NAT real server).
The director accepts forwarded packets whose source is its own VIP
(``accept_local=1`` on br0), which Linux otherwise drops as martians.

The TUN lab (``kind="tun"``) puts the real servers two routed hops away::

    director br0 ── router (198.18.0.254 | 198.19.0.1, br0) ─┬─ rs1 198.19.0.2
       route 198.19.0.0/24 via 198.18.0.254                 └─ rs2 198.19.0.3

each prepared by ``dirctl realserver up --method tun`` (the userspace IPIP
decapsulator where the kernel has no ``ipip``).  The mixed lab (``kind="mixed"``)
has one real server of each method: rs1 198.18.0.2 (NAT), rs2 198.18.0.3 (DR) and
rs3 198.19.0.2 (TUN, behind the router).

The IPv6 labs (``kind="nat6"``, ``"dr6"``, ``"tun6"``) are the same shapes, dual
stack: every link keeps its IPv4 address and gets one of SPEC §3's IPv6 networks too
(client 2001:db8:1::10/64, director 2001:db8:1::1/64 and VIP 2001:db8:1::100/128
outside, 2001:db8:2::1/64 inside, real servers 2001:db8:2::2 and ::3, or behind the
router 2001:db8:3::2 and ::3 with the router at 2001:db8:2::254 | 2001:db8:3::1), IPv6
forwarding on in the director and the router only, and the lab's VIP is the IPv6 one.
The IPv4 VIP stays on the director: a service of either family may use the same real
servers (IPVS's mixed-family tunnels).  Addresses are added without duplicate address
detection (``nodad``), usable at once.

The VIP is put on the director's outside interface by the lab, as an administrator
would for IPVS; the daemon never adds addresses.  Every namespace name starts with
a per-run prefix so that parallel runs and tests do not collide, and teardown
removes whatever of the lab exists, even after a partial build.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # pyroute2 costs ~0.1 s to import: only the functions that build need it
    from pyroute2 import NetNS

CLIENT_ADDR = "203.0.113.10"
DIRECTOR_OUTSIDE = "203.0.113.1"
VIP = "203.0.113.5"
DIRECTOR_INSIDE = "198.18.0.1"
OUTSIDE_PREFIXLEN = 24
INSIDE_PREFIXLEN = 24
BACKEND_PORTS: tuple[int, ...] = (80, 8000, 21)
ROUTER_INSIDE = "198.18.0.254"
ROUTER_REMOTE = "198.19.0.1"
REMOTE_NET = "198.19.0.0/24"
# The IPv6 side of the same links (SPEC §3), for the labs of kind nat6, dr6 and tun6.
CLIENT_ADDR6 = "2001:db8:1::10"
DIRECTOR_OUTSIDE6 = "2001:db8:1::1"
VIP6 = "2001:db8:1::100"
DIRECTOR_INSIDE6 = "2001:db8:2::1"
ROUTER_INSIDE6 = "2001:db8:2::254"
ROUTER_REMOTE6 = "2001:db8:3::1"
REMOTE_NET6 = "2001:db8:3::/64"
PREFIXLEN6 = 64
IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection, usable at once
# kind -> (name, address, method) of each real server
KINDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "nat": (("rs1", "198.18.0.2", "nat"), ("rs2", "198.18.0.3", "nat")),
    "dr": (("rs1", "198.18.0.2", "dr"), ("rs2", "198.18.0.3", "dr")),
    "tun": (("rs1", "198.19.0.2", "tun"), ("rs2", "198.19.0.3", "tun")),
    "mixed": (("rs1", "198.18.0.2", "nat"), ("rs2", "198.18.0.3", "dr"),
              ("rs3", "198.19.0.2", "tun")),
    "nat6": (("rs1", "2001:db8:2::2", "nat"), ("rs2", "2001:db8:2::3", "nat")),
    "dr6": (("rs1", "2001:db8:2::2", "dr"), ("rs2", "2001:db8:2::3", "dr")),
    "tun6": (("rs1", "2001:db8:3::2", "tun"), ("rs2", "2001:db8:3::3", "tun")),
}  # fmt: skip
IPVSADM_FLAG = {"nat": "-m", "dr": "-g", "tun": "-i"}
# The IPv4 address of each real server of an IPv6 lab (the same host, dual stack).
ADDR4_OF: dict[str, str] = {
    "2001:db8:2::2": "198.18.0.2",
    "2001:db8:2::3": "198.18.0.3",
    "2001:db8:3::2": "198.19.0.2",
    "2001:db8:3::3": "198.19.0.3",
}


def addr_port(addr: str, port: int) -> str:
    """``a.b.c.d:port`` or ``[v6]:port``, as ipvsadm and URLs write them."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


T = TypeVar("T")


def new_prefix(base: str = "dl") -> str:
    """A namespace-name prefix unique to this run (short: names show in `ip netns`)."""
    return f"{base}{os.getpid() % 100000}{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class RealServerHost:
    name: str  # "rs1"
    addr: str  # "198.18.0.2"
    netns: str  # namespace name
    method: str = "nat"  # how the director reaches it: nat, dr or tun

    @property
    def remote(self) -> bool:
        """Behind the router, on the remote (TUN) network."""
        return not self.addr.startswith(("198.18.", "2001:db8:2:"))

    @property
    def addr4(self) -> str:
        """Its IPv4 address (an IPv6 lab's real servers have both)."""
        return ADDR4_OF.get(self.addr, self.addr)


@dataclass(slots=True)
class Lab:
    """Names and addresses of one built lab, and the processes it started."""

    prefix: str
    client: str
    director: str
    real_servers: tuple[RealServerHost, ...]
    vip: str = VIP
    client_addr: str = CLIENT_ADDR
    backends: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kind: str = "nat"
    router: str | None = None

    @classmethod
    def named(cls, prefix: str, kind: str = "nat") -> Lab:
        if kind not in KINDS:
            raise ValueError(f"unknown lab kind {kind!r}: one of {', '.join(KINDS)}")
        servers = tuple(
            RealServerHost(name, addr, f"{prefix}-{name}", method)
            for name, addr, method in KINDS[kind]
        )
        six = kind.endswith("6")
        return cls(
            prefix=prefix,
            client=f"{prefix}-client",
            director=f"{prefix}-director",
            real_servers=servers,
            vip=VIP6 if six else VIP,
            client_addr=CLIENT_ADDR6 if six else CLIENT_ADDR,
            kind=kind,
            router=f"{prefix}-router" if any(rs.remote for rs in servers) else None,
        )

    @property
    def family(self) -> int:
        """6 for the IPv6 labs (nat6, dr6, tun6), else 4."""
        return 6 if self.kind.endswith("6") else 4

    @property
    def method_kind(self) -> str:
        """nat, dr, tun or mixed: the shape, whatever the family."""
        return self.kind.removesuffix("6")

    def url(self, port: int = 80, path: str = "/") -> str:
        """``http://VIP:PORT/`` (``http://[VIP6]:PORT/`` in an IPv6 lab)."""
        return f"http://{addr_port(self.vip, port)}{path}"

    @property
    def namespaces(self) -> tuple[str, ...]:
        router = (self.router,) if self.router else ()
        return (self.client, self.director, *router, *(rs.netns for rs in self.real_servers))

    def rules(self, port: int = 80, scheduler: str = "rr") -> str:
        """ipvsadm-save lines for one service on ``port`` over every real server."""
        vip = addr_port(self.vip, port)
        lines = [f"-A -t {vip} -s {scheduler}"]
        lines += [
            f"-a -t {vip} -r {addr_port(rs.addr, port)} {IPVSADM_FLAG[rs.method]} -w 1"
            for rs in self.real_servers
        ]
        return "\n".join(lines) + "\n"

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def run(
        self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace and capture its output as text; with ``check``,
        a failure raises CommandFailed, whose message ends with the command's stderr."""
        argv = self.exec_argv(ns, argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise CommandFailed(done.returncode, argv, done.stdout, done.stderr)
        return done


class CommandFailed(subprocess.CalledProcessError):
    """A lab command failed: the message says which, its exit status and its stderr."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        said = f": {err}" if err else " (nothing on stderr)"
        return f"`{shlex.join(self.cmd)}` failed with exit status {self.returncode}{said}"


CLONE_NEWNET = 0x40000000
NETNS_RUN = Path("/run/netns")  # where `ip netns` and pyroute2 keep the named namespaces


def setns(fd: int, name: str = "") -> None:
    """setns(2): the calling thread enters the network namespace open at ``fd``."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {name}: {os.strerror(err)}")


def in_netns(ns: str, action: Callable[[], T]) -> T:
    """``action()`` run inside namespace ``ns``, by a thread of its own that enters it
    with setns(2) (a thread's network namespace is its own) and then ends: the rest of
    the process never moves.  For what needs the namespace but no program, such as
    /proc/sys/net, which is the namespace of whoever opens it."""
    result: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(NETNS_RUN / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, ns)
            finally:
                os.close(fd)
            result.append(action())
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    thread = threading.Thread(target=run, name=f"in {ns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return result[0]


def set_sysctl(ns: str, key: str, value: str) -> None:
    """``sysctl -w KEY=VALUE`` in namespace ``ns``, without the ``sysctl`` program."""
    path = Path("/proc/sys", *key.split("."))
    try:
        in_netns(ns, lambda: path.write_text(f"{value}\n"))
    except OSError as err:
        raise OSError(err.errno, f"{ns}: sysctl {key}={value}: {err.strerror}") from None


def get_sysctl(ns: str, key: str) -> str:
    """``sysctl -n KEY`` in namespace ``ns``."""
    path = Path("/proc/sys", *key.split("."))
    return in_netns(ns, path.read_text).strip()


def _up(ns: NetNS, ifname: str, addr: str | None = None, prefixlen: int = 24) -> int:
    idx: int = ns.link_lookup(ifname=ifname)[0]
    if addr is not None:
        ns.addr("add", index=idx, address=addr, prefixlen=prefixlen)
    ns.link("set", index=idx, state="up")
    return idx


def _build(lab: Lab) -> None:
    from pyroute2 import NetNS, netns

    for name in lab.namespaces:
        netns.create(name)
    for name in lab.namespaces:
        with NetNS(name) as ns:
            _up(ns, "lo")

    with NetNS(lab.client) as ns:
        ns.link(
            "add", ifname="eth0", kind="veth", peer={"ifname": "ext0", "net_ns_fd": lab.director}
        )
        _up(ns, "eth0", CLIENT_ADDR, OUTSIDE_PREFIXLEN)
        ns.route("add", dst="0.0.0.0/0", gateway=DIRECTOR_OUTSIDE)

    with NetNS(lab.director) as ns:
        ext = _up(ns, "ext0", DIRECTOR_OUTSIDE, OUTSIDE_PREFIXLEN)
        ns.addr("add", index=ext, address=VIP, prefixlen=32)
        ns.link("add", ifname="br0", kind="bridge")
        _up(ns, "br0", DIRECTOR_INSIDE, INSIDE_PREFIXLEN)
        br = ns.link_lookup(ifname="br0")[0]
        for rs in lab.real_servers:
            if rs.remote:
                continue
            ns.link(
                "add", ifname=rs.name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": rs.netns}
            )
            port = ns.link_lookup(ifname=rs.name)[0]
            ns.link("set", index=port, master=br)
            ns.link("set", index=port, state="up")
    set_sysctl(lab.director, "net.ipv4.ip_forward", "1")

    if lab.router is not None:
        _build_router(lab, lab.router)

    for rs in lab.real_servers:
        with NetNS(rs.netns) as ns:
            _up(ns, "eth0", rs.addr4, INSIDE_PREFIXLEN)
            ns.route(
                "add", dst="0.0.0.0/0", gateway=ROUTER_REMOTE if rs.remote else DIRECTOR_INSIDE
            )
    if lab.family == 6:
        _build_ipv6(lab)
    if lab.method_kind != "nat":
        # DR and TUN replies come back through the director with the VIP, one of its
        # own addresses, as source: without accept_local they are martians.
        set_sysctl(lab.director, "net.ipv4.conf.br0.accept_local", "1")


def _addr6(ns: NetNS, ifname: str, addr: str, prefixlen: int = PREFIXLEN6) -> None:
    idx = ns.link_lookup(ifname=ifname)[0]
    ns.addr("add", index=idx, address=addr, prefixlen=prefixlen, flags=IFA_F_NODAD)


def _build_ipv6(lab: Lab) -> None:
    """The IPv6 side of an IPv6 lab's links (the module docstring's addresses)."""
    from pyroute2 import NetNS

    with NetNS(lab.client) as ns:
        _addr6(ns, "eth0", CLIENT_ADDR6)
        ns.route("add", dst="::/0", gateway=DIRECTOR_OUTSIDE6, family=socket.AF_INET6)
    with NetNS(lab.director) as ns:
        _addr6(ns, "ext0", DIRECTOR_OUTSIDE6)
        _addr6(ns, "ext0", VIP6, 128)
        _addr6(ns, "br0", DIRECTOR_INSIDE6)
        if lab.router is not None:
            ns.route("add", dst=REMOTE_NET6, gateway=ROUTER_INSIDE6, family=socket.AF_INET6)
    set_sysctl(lab.director, "net.ipv6.conf.all.forwarding", "1")
    if lab.router is not None:
        with NetNS(lab.router) as ns:
            _addr6(ns, "lan0", ROUTER_INSIDE6)
            _addr6(ns, "br0", ROUTER_REMOTE6)
            ns.route("add", dst="::/0", gateway=DIRECTOR_INSIDE6, family=socket.AF_INET6)
        set_sysctl(lab.router, "net.ipv6.conf.all.forwarding", "1")
    for rs in lab.real_servers:
        with NetNS(rs.netns) as ns:
            _addr6(ns, "eth0", rs.addr)
            gateway = ROUTER_REMOTE6 if rs.remote else DIRECTOR_INSIDE6
            ns.route("add", dst="::/0", gateway=gateway, family=socket.AF_INET6)


def _build_router(lab: Lab, router: str) -> None:
    """The router between the director's LAN and the remote network (198.19.0.0/24)."""
    from pyroute2 import NetNS

    with NetNS(lab.director) as ns:
        ns.link("add", ifname="router", kind="veth", peer={"ifname": "lan0", "net_ns_fd": router})
        port = ns.link_lookup(ifname="router")[0]
        ns.link("set", index=port, master=ns.link_lookup(ifname="br0")[0])
        ns.link("set", index=port, state="up")
        ns.route("add", dst=REMOTE_NET, gateway=ROUTER_INSIDE)
    with NetNS(router) as ns:
        _up(ns, "lan0", ROUTER_INSIDE, INSIDE_PREFIXLEN)
        ns.link("add", ifname="br0", kind="bridge")
        _up(ns, "br0", ROUTER_REMOTE, INSIDE_PREFIXLEN)
        br = ns.link_lookup(ifname="br0")[0]
        for rs in lab.real_servers:
            if not rs.remote:
                continue
            ns.link(
                "add", ifname=rs.name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": rs.netns}
            )
            port = ns.link_lookup(ifname=rs.name)[0]
            ns.link("set", index=port, master=br)
            ns.link("set", index=port, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=DIRECTOR_INSIDE)
    set_sysctl(router, "net.ipv4.ip_forward", "1")
    # The real servers' replies have the VIP as source, routed back the other way.
    for key in ("all", "default", "lan0", "br0"):
        set_sysctl(router, f"net.ipv4.conf.{key}.rp_filter", "0")


def build(prefix: str | None = None, kind: str = "nat") -> Lab:
    """Create the lab's namespaces, links, addresses and routes; undo all on failure.

    For the DR, TUN and mixed labs the DR and TUN real servers are also prepared
    with ``dirctl realserver up`` inside their namespaces.
    """
    lab = Lab.named(prefix or new_prefix(), kind)
    try:
        _build(lab)
        for rs in lab.real_servers:
            if rs.method in ("dr", "tun"):
                realserver(lab, rs, "up", "--vip", lab.vip, "--method", rs.method, "-q")
    except BaseException:
        teardown(lab)
        raise
    return lab


PEER_DIRECTOR_INSIDE = "198.18.0.10"
# The second director's own link to the client (``outside``): the client's eth1.
PEER_OUTSIDE = "198.51.100.1"
CLIENT_SECOND = "198.51.100.10"


def add_peer_director(
    lab: Lab, name: str = "director2", addr: str = PEER_DIRECTOR_INSIDE, outside: bool = False
) -> Lab:
    """A second director for the sync daemon's tests: namespace ``<prefix>-<name>``
    with ``eth1`` (``addr``/24) a port of the director's inside bridge, the link a
    master and a backup multicast their sync messages over (ip_forward on, as on the
    first; a route to the remote real servers via the router, if the lab has one).
    With ``outside``, also a link of its own to the client (its ``ext0``
    198.51.100.1/24, the client's ``eth1`` 198.51.100.10/24, rp_filter off on both
    ends), so that the VIP can move to it: add the VIP to its ``ext0`` and route the
    client's packets for the VIP via 198.51.100.1.  Returns the lab as that director
    sees it (``Lab.director`` is the new namespace), for a ``Daemon`` there;
    ``teardown`` removes it with the rest."""
    import dataclasses

    from pyroute2 import NetNS, netns

    ns_name = f"{lab.prefix}-{name}"
    netns.create(ns_name)
    try:
        with NetNS(ns_name) as ns:
            _up(ns, "lo")
        with NetNS(lab.director) as ns:
            ns.link("add", ifname=name, kind="veth", peer={"ifname": "eth1", "net_ns_fd": ns_name})
            port = ns.link_lookup(ifname=name)[0]
            ns.link("set", index=port, master=ns.link_lookup(ifname="br0")[0])
            ns.link("set", index=port, state="up")
        with NetNS(ns_name) as ns:
            _up(ns, "eth1", addr, INSIDE_PREFIXLEN)
            if lab.router is not None:  # the TUN real servers, behind the router
                ns.route("add", dst=REMOTE_NET, gateway=ROUTER_INSIDE)
        set_sysctl(ns_name, "net.ipv4.ip_forward", "1")
        if outside:
            with NetNS(lab.client) as ns:
                ns.link(
                    "add", ifname="eth1", kind="veth", peer={"ifname": "ext0", "net_ns_fd": ns_name}
                )
                _up(ns, "eth1", CLIENT_SECOND, OUTSIDE_PREFIXLEN)
            with NetNS(ns_name) as ns:
                _up(ns, "ext0", PEER_OUTSIDE, OUTSIDE_PREFIXLEN)
                ns.route("add", dst="203.0.113.0/24", gateway=CLIENT_SECOND)
            for ns_, key in (
                *((lab.client, k) for k in ("all", "default", "eth0", "eth1")),
                *((ns_name, k) for k in ("all", "default", "ext0")),
            ):
                set_sysctl(ns_, f"net.ipv4.conf.{key}.rp_filter", "0")
    except BaseException:
        _kill_namespace_pids(ns_name)
        netns.remove(ns_name)
        raise
    return dataclasses.replace(lab, director=ns_name, backends=[])


def _dirctl() -> str:
    from director.lab.daemon import venv_program

    return venv_program("dirctl")


def realserver(
    lab: Lab, rs: RealServerHost, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``dirctl realserver ARGS`` in a real server's namespace."""
    done = lab.run(rs.netns, [_dirctl(), "realserver", *args], check=False)
    if check and done.returncode:
        raise RuntimeError(f"{rs.name}: dirctl realserver {' '.join(args)}: {done.stderr.strip()}")
    return done


def start_backends(
    lab: Lab,
    ports: Sequence[int] = BACKEND_PORTS,
    timeout: float = 10.0,
    detach: bool = False,
    pad: int = 0,
) -> None:
    """Start one backend per real server, each answering with its own name, and wait.

    ``detach`` lets them outlive this process (``lab up``); ``teardown`` ends them.
    ``pad`` makes every answer at least that many bytes (the benchmark's --body-size).
    """
    for rs in lab.real_servers:
        argv = [sys.executable, "-m", "director.lab.backend", "--name", rs.name, "--pad", str(pad)]
        for port in ports:
            argv += ["--port", str(port)]
        lab.backends.append(
            subprocess.Popen(
                lab.exec_argv(rs.netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL if detach else subprocess.PIPE,
                start_new_session=detach,
            )
        )
    deadline = time.monotonic() + timeout
    for rs, proc in zip(lab.real_servers, lab.backends, strict=True):
        while not _listening(lab, rs.netns, ports):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"backend {rs.name} exited: {err.strip()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"backend {rs.name} did not listen on {list(ports)}")
            time.sleep(0.05)


def _listening(lab: Lab, ns: str, ports: Sequence[int]) -> bool:
    out = lab.run(ns, ["ss", "-Hltn"], check=False).stdout
    local = {line.split()[3].rsplit(":", 1)[-1] for line in out.splitlines() if line.split()}
    return all(str(p) in local for p in ports)


def _kill_namespace_pids(name: str) -> None:
    """End what still runs in a lab namespace (the lab's own backends and daemons)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def teardown(lab: Lab) -> None:
    """Remove every namespace of the lab that exists; never raises for missing parts."""
    for proc in lab.backends:
        if proc.poll() is None:
            proc.terminate()
    for proc in lab.backends:
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    lab.backends.clear()
    from pyroute2 import netns

    existing = set(netns.listnetns())
    # A lab brought down by name alone (``lab down``) does not know its kind: take every
    # namespace of its prefix.
    names = [*lab.namespaces, *sorted(n for n in existing if n.startswith(f"{lab.prefix}-"))]
    for name in dict.fromkeys(names):
        # `realserver down` removes the record under /run (a no-op on NAT servers); the
        # kill below is the backstop for the decapsulator.
        if name in existing and name.startswith(f"{lab.prefix}-rs"):
            with contextlib.suppress(Exception):
                lab.run(name, [_dirctl(), "realserver", "down", "-q"], check=False, timeout=20)
    for name in dict.fromkeys(names):
        if name in existing:
            _kill_namespace_pids(name)
            try:
                netns.remove(name)
            except OSError:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


def namespace_exists(name: str) -> bool:
    return name in _list_namespaces()


def _list_namespaces() -> list[str]:
    from pyroute2 import netns

    names: list[str] = netns.listnetns()
    return names
