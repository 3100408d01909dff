"""The HA lab (``dirctl lab up --kind ha``): two directors, keepalived's VRRP moving the
VIP and the real servers' gateway between them, the sync daemon following.

::

    client 203.0.113.10/24 ─┐        switch (two bridges, no address)
                            out0 ──┬── dir1 ext0 203.0.113.1/24 ┐ VRRP VI_OUT: 203.0.113.5
                                   └── dir2 ext0 203.0.113.2/24 ┘   (the VIP)
    rs1 198.18.0.2 ─┐
    rs2 198.18.0.3 ─┴─ in0 ────┬── dir1 int0 198.18.0.101/24 ┐ VRRP VI_IN: 198.18.0.1
                               └── dir2 int0 198.18.0.102/24 ┘   (the servers' gateway)

One shared L2 segment on each side (the ``switch`` namespace's bridges ``out0`` and
``in0``) is what lets a VRRP address float: the new master's gratuitous ARPs point
the client and the real servers at it.  Both directors run ``directord`` with the same
rules (a DR service on port 80, a NAT service on 8000, over rs1 and rs2, which are
prepared for DR and answer NAT alike) and keepalived for VRRP only (``--vrrp``, no
``virtual_server``: director balances).  The two VRRP instances are one
``vrrp_sync_group``, so the VIP and the gateway move together (a NAT server's answers
must reach the director that has its connection; a DR server's go to the client
through the gateway).  The group's notify scripts are ``dirctl vrrp-notify``, which
switches the sync daemon (on ``int0``, syncid 7) to the VRRP role, as keepalived's
``lvs_sync_daemon`` would for the kernel's IPVS.  Both instances start as BACKUP with
``nopreempt``: dir1 (priority 150) is started first and becomes MASTER; a director
that comes back stays BACKUP and learns the connections from its peer.

Every process is started by this module in its namespace with configuration in the
lab's work directory (keepalived with its own pid files) and ends with the lab;
keepalived's packaged service is never used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from director.lab import hosts, topology
from director.lab.daemon import Daemon, venv_program
from director.lab.topology import Lab, RealServerHost

VIP = topology.VIP  # 203.0.113.5, VRRP instance VI_OUT on ext0
GATEWAY = topology.DIRECTOR_INSIDE  # 198.18.0.1, VRRP instance VI_IN on int0
OUTSIDE_IF = "ext0"
INSIDE_IF = "int0"
SYNC_IF = INSIDE_IF  # the sync daemon's multicast interface on both directors
SYNCID = 7
ADVERT_INT = 1  # seconds: a dead master is noticed in 3 * 1 s plus the skew
# name, outside address, inside address, VRRP priority
DIRECTORS = (
    ("dir1", "203.0.113.1", "198.18.0.101", 150),
    ("dir2", "203.0.113.2", "198.18.0.102", 100),
)
VRIDS = {"VI_OUT": 51, "VI_IN": 52}
REAL_SERVERS = (("rs1", "198.18.0.2"), ("rs2", "198.18.0.3"))
DR_PORT = 80
NAT_PORT = 8000
PROGRAM = "keepalived"


@dataclass(frozen=True, slots=True)
class DirectorHost:
    name: str
    outside: str
    inside: str
    priority: int
    netns: str


@dataclass(slots=True)
class HaLab:
    """The namespaces of the HA lab and the processes started in them."""

    base: Lab  # client and real servers; ``base.director`` is dir1
    directors: tuple[DirectorHost, ...]
    switch: str
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @property
    def vip(self) -> str:
        return self.base.vip

    @property
    def client(self) -> str:
        return self.base.client

    def director(self, name: str) -> DirectorHost:
        return next(d for d in self.directors if d.name == name)

    def peer(self, d: DirectorHost) -> DirectorHost:
        return next(o for o in self.directors if o is not d)

    def view(self, d: DirectorHost) -> Lab:
        """The lab as one director sees it (for a ``Daemon`` in that namespace)."""
        return dataclasses.replace(self.base, director=d.netns, backends=[])

    def daemon(self, d: DirectorHost) -> Daemon:
        """The ``Daemon`` of ``d`` (its files in ``workdir/<name>``), made on first use."""
        if d.name not in self.daemons:
            self.daemons[d.name] = Daemon(self.view(d), self.workdir / d.name)
        return self.daemons[d.name]

    def run(
        self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.base.run(ns, argv, check=check, timeout=timeout)

    def rules(self) -> str:
        """The same on both directors: DR on port 80, NAT on port 8000."""
        lines = [f"-A -t {self.vip}:{DR_PORT} -s rr"]
        lines += [f"-a -t {self.vip}:{DR_PORT} -r {rs.addr}:{DR_PORT} -g -w 1"
                  for rs in self.base.real_servers]  # fmt: skip
        lines.append(f"-A -t {self.vip}:{NAT_PORT} -s rr")
        lines += [f"-a -t {self.vip}:{NAT_PORT} -r {rs.addr}:{NAT_PORT} -m -w 1"
                  for rs in self.base.real_servers]  # fmt: skip
        return "\n".join(lines) + "\n"


def missing_program() -> str | None:
    return None if shutil.which(PROGRAM) else PROGRAM


def named(prefix: str, workdir: Path) -> HaLab:
    hosts = tuple(
        DirectorHost(name, out, ins, prio, f"{prefix}-{name}") for name, out, ins, prio in DIRECTORS
    )
    servers = tuple(RealServerHost(n, a, f"{prefix}-{n}", "dr") for n, a in REAL_SERVERS)
    base = Lab(
        prefix=prefix,
        client=f"{prefix}-client",
        director=hosts[0].netns,
        real_servers=servers,
        kind="ha",
    )
    return HaLab(base, hosts, f"{prefix}-switch", workdir)


def _build(lab: HaLab) -> None:
    from pyroute2 import NetNS

    up = topology._up
    hosts.create([lab.client, lab.switch, *(d.netns for d in lab.directors),
                  *(rs.netns for rs in lab.base.real_servers)])  # fmt: skip
    with NetNS(lab.switch) as ns:
        for bridge in ("out0", "in0"):
            ns.link("add", ifname=bridge, kind="bridge")
            up(ns, bridge)
        hosts.bridge_port(ns, "out0", "client", lab.client)
        for d in lab.directors:
            hosts.bridge_port(ns, "out0", f"{d.name}-ext", d.netns, OUTSIDE_IF)
            hosts.bridge_port(ns, "in0", f"{d.name}-int", d.netns, INSIDE_IF)
        for rs in lab.base.real_servers:
            hosts.bridge_port(ns, "in0", rs.name, rs.netns)
    with NetNS(lab.client) as ns:
        up(ns, "eth0", topology.CLIENT_ADDR, topology.OUTSIDE_PREFIXLEN)
    for d in lab.directors:
        with NetNS(d.netns) as ns:
            up(ns, OUTSIDE_IF, d.outside, topology.OUTSIDE_PREFIXLEN)
            up(ns, INSIDE_IF, d.inside, topology.INSIDE_PREFIXLEN)
        topology.set_sysctl(d.netns, "net.ipv4.ip_forward", "1")
        # DR answers come back through the gateway with the VIP, one of the master's own
        # addresses, as source: without accept_local they are martians.
        topology.set_sysctl(d.netns, f"net.ipv4.conf.{INSIDE_IF}.accept_local", "1")
        for key in ("all", "default", OUTSIDE_IF, INSIDE_IF):
            topology.set_sysctl(d.netns, f"net.ipv4.conf.{key}.rp_filter", "0")
    for rs in lab.base.real_servers:
        with NetNS(rs.netns) as ns:
            up(ns, "eth0", rs.addr, topology.INSIDE_PREFIXLEN)
            ns.route("add", dst="0.0.0.0/0", gateway=GATEWAY)


def build(prefix: str | None = None, workdir: Path | None = None) -> HaLab:
    """The namespaces, links, addresses and routes, the real servers prepared by
    ``dirctl realserver up --method dr``; nothing running yet.  Undone on failure."""
    prefix = prefix or topology.new_prefix("dh")
    lab = named(prefix, workdir or Path("/run/director-lab") / prefix)
    try:
        lab.workdir.mkdir(parents=True, exist_ok=True)
        _build(lab)
        for rs in lab.base.real_servers:
            topology.realserver(lab.base, rs, "up", "--vip", lab.vip, "--method", "dr", "-q")
    except BaseException:
        teardown(lab)
        raise
    return lab


# --- keepalived's configuration -------------------------------------------------------


def notify_command(lab: HaLab, d: DirectorHost, state: str) -> str:
    """The notify script line: ``dirctl vrrp-notify STATE`` on this director's daemon."""
    socket = lab.daemon(d).socket_path
    return (f"{venv_program('dirctl')} --socket {socket} vrrp-notify {state} "
            f"--mcast-interface {SYNC_IF} --syncid {SYNCID}")  # fmt: skip


def keepalived_config(lab: HaLab, d: DirectorHost) -> str:
    """VRRP only: the VIP on the outside and the gateway on the inside, one sync
    group whose notify scripts switch the sync daemon's role."""
    notifies = "\n".join(
        f'    notify_{state} "{notify_command(lab, d, state)}"'
        for state in ("master", "backup", "fault", "stop")
    )

    def instance(name: str, ifname: str, addr: str) -> str:
        return f"""\
vrrp_instance {name} {{
    state BACKUP
    nopreempt
    interface {ifname}
    virtual_router_id {VRIDS[name]}
    priority {d.priority}
    advert_int {ADVERT_INT}
    virtual_ipaddress {{
        {addr}/32 dev {ifname}
    }}
}}
"""

    return f"""\
# generated by director.lab.ha for lab {lab.base.prefix}: VRRP only, director balances
global_defs {{
    router_id {d.name}
    script_user root
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}

vrrp_sync_group DIRECTOR {{
    group {{
        VI_OUT
        VI_IN
    }}
{notifies}
}}

{instance("VI_OUT", OUTSIDE_IF, lab.vip)}
{instance("VI_IN", INSIDE_IF, GATEWAY)}"""


def _pidfiles(lab: HaLab, d: DirectorHost) -> list[str]:
    base = lab.workdir / d.name
    return ["-p", str(base / "keepalived.pid"), "-r", str(base / "vrrp.pid"),
            "-c", str(base / "checkers.pid")]  # fmt: skip


def start_keepalived(lab: HaLab, d: DirectorHost) -> None:
    """keepalived in ``d``'s namespace, in the foreground of a session of its own
    (``-n``), VRRP only, logging to its file, with pid files of its own."""
    where = lab.workdir / d.name
    where.mkdir(parents=True, exist_ok=True)
    conf = where / "keepalived.conf"
    conf.write_text(keepalived_config(lab, d))
    argv = [PROGRAM, "--vrrp", "--dont-fork", "--log-console", "--log-detail",
            "-f", str(conf), *_pidfiles(lab, d)]  # fmt: skip
    lab.procs[f"keepalived-{d.name}"] = hosts.spawn(
        lab.base.exec_argv(d.netns, argv), where / "keepalived.log"
    )


def start_director(lab: HaLab, d: DirectorHost) -> Daemon:
    """directord in ``d`` (the lab's rules restored on its first start), then its
    keepalived, which starts as BACKUP and tells the daemon so."""
    daemon = lab.daemon(d)
    fresh = not daemon.rules_path.exists()
    daemon.start()
    if fresh:
        done = daemon.dirctl("restore", input=lab.rules())
        if done.returncode:
            raise RuntimeError(f"{d.name}: dirctl restore: {done.stderr.strip()}")
    start_keepalived(lab, d)
    return daemon


def start(lab: HaLab, timeout: float = 30.0) -> None:
    """dir1, then (once it is MASTER) dir2, which stays BACKUP."""
    first, second = lab.directors
    start_director(lab, first)
    wait_role(lab, first, "master", timeout)
    start_director(lab, second)
    wait_role(lab, second, "backup", timeout)


# --- state ---------------------------------------------------------------------------


def has_address(lab: HaLab, d: DirectorHost, ifname: str, addr: str) -> bool:
    out = lab.run(d.netns, ["ip", "-o", "-4", "addr", "show", "dev", ifname], check=False).stdout
    return f" {addr}/" in out


def sync_roles(lab: HaLab, d: DirectorHost) -> set[str]:
    """The sync daemons running in ``d``'s directord (none if it does not answer)."""
    from director.ctl import protocol

    try:
        rows = protocol.request(str(lab.daemon(d).socket_path), "daemon", {}, 5.0)
    except (protocol.DaemonUnreachable, protocol.DaemonFailed, protocol.RequestRefused):
        return set()
    return {str(r["state"]) for r in rows}


def role(lab: HaLab, d: DirectorHost) -> str | None:
    """``master`` when ``d`` holds both VRRP addresses and runs the master sync daemon
    alone, ``backup`` when it holds neither and runs the backup alone, else None."""
    addrs = (has_address(lab, d, OUTSIDE_IF, lab.vip), has_address(lab, d, INSIDE_IF, GATEWAY))
    roles = sync_roles(lab, d)
    if addrs == (True, True) and roles == {"master"}:
        return "master"
    if addrs == (False, False) and roles == {"backup"}:
        return "backup"
    return None


def wait_role(lab: HaLab, d: DirectorHost, wanted: str, timeout: float = 20.0) -> float:
    """Wait until ``d`` is in role ``wanted``; the seconds it took."""
    start_at = time.monotonic()
    while role(lab, d) != wanted:
        if time.monotonic() - start_at > timeout:
            raise TimeoutError(
                f"{d.name} not {wanted} after {timeout:.0f} s (addresses and sync "
                f"daemons: {sync_roles(lab, d)}):\n{log_tail(lab, d)}"
            )
        time.sleep(0.1)
    return time.monotonic() - start_at


def master(lab: HaLab) -> DirectorHost:
    """The director that is master now."""
    for d in lab.directors:
        if role(lab, d) == "master":
            return d
    raise RuntimeError("no director is master")


def log_tail(lab: HaLab, d: DirectorHost) -> str:
    return hosts.tail(lab.workdir / d.name / "keepalived.log")


# --- death and end --------------------------------------------------------------------


def crash(lab: HaLab, d: DirectorHost) -> None:
    """``d`` dies as in a crash: kill -9 of every process in its namespace at once
    (directord's supervisor and workers, keepalived and its VRRP child).  What the
    dead keepalived had put on the links stays, as it would on a hung host."""
    out = subprocess.run(["ip", "netns", "pids", d.netns], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    hosts.kill_all([*pids, *(c for p in pids for c in hosts.descendants(p))])
    daemon = lab.daemons.get(d.name)
    if daemon is not None and daemon.proc is not None:
        daemon.proc.wait(timeout=10)
        daemon.kill()  # closes its notify socket
    proc = lab.procs.pop(f"keepalived-{d.name}", None)
    if proc is not None:
        proc.wait(timeout=10)


def recover(lab: HaLab, d: DirectorHost) -> Daemon:
    """``d`` started again after its death: directord (its rules and its sync daemons
    from its files), then keepalived, which removes the VRRP addresses its dead
    predecessor left ("removing VIPs"), joins as BACKUP (``nopreempt``: the peer stays
    master) and switches the sync daemon to backup."""
    return start_director(lab, d)


def teardown(lab: HaLab) -> None:
    """Stop every process the lab started, then remove its namespaces."""
    for proc in lab.procs.values():
        hosts.stop_process(proc, timeout=10)
    lab.procs.clear()
    for daemon in lab.daemons.values():
        with contextlib.suppress(Exception):
            daemon.stop(timeout=10)
        daemon.kill()
    topology.teardown(lab.base)
