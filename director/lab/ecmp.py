"""The ECMP lab (``dirctl lab up --kind ecmp``): directors active/active behind a router.

::

    client 203.0.113.10/24 ── ext0 203.0.113.1/24  router (BIRD 2, AS 65000)
                                                   br0 198.18.0.254/24
           ┌──────────────────┬──────────────────┬────┴──────────┬───────────────┐
    dir1 198.18.0.101   dir2 198.18.0.102   dir3 198.18.0.103   rs1 198.18.0.2  rs2 198.18.0.3
    VIP 198.51.100.5/32 on lo, directord (DR),                  DR: VIP on lo, gw .254
    ExaBGP (AS 65001) + `dirctl announce`

The router learns the VIP /32 (198.51.100.0/24 is SPEC §3's range of VIPs routed to
the director) from every director that announces it, over eBGP with a 3 s hold time,
and BIRD's kernel protocol installs the equal routes as one multipath route
(``merge paths``).  ``net.ipv4.fib_multipath_hash_policy = 1`` in the router's
namespace (only there) hashes each flow's addresses and ports (L4) to pick its
director.  The directors forward by DR to the real servers on the one inside LAN; the
real servers answer the client through the router, so a director's death touches only
what goes client to server.  Each director runs ExaBGP, whose ``process`` is
``dirctl announce``: it announces the VIP while that director's daemon answers on its
control socket and has a healthy real server for it, and withdraws it otherwise.

Every process (BIRD, each ExaBGP, the daemons) is started in its namespace by this
module, with its configuration in the lab's work directory, and ends with the lab:
never the packages' system services.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from director.lab import hosts, topology
from director.lab.daemon import Daemon, venv_program
from director.lab.topology import Lab, RealServerHost

VIP = "198.51.100.5"
ROUTER_OUTSIDE = topology.DIRECTOR_OUTSIDE  # 203.0.113.1: the client's gateway
ROUTER_INSIDE = topology.ROUTER_INSIDE  # 198.18.0.254
DIRECTOR_ADDRS = ("198.18.0.101", "198.18.0.102", "198.18.0.103")
REAL_SERVERS = (("rs1", "198.18.0.2"), ("rs2", "198.18.0.3"))
ROUTER_AS = 65000
DIRECTOR_AS = 65001  # the same on every director: one anycast site
HOLD_TIME = 3  # seconds: BIRD's smallest; keepalives every second
PROGRAMS = ("bird", "birdc", "exabgp")


@dataclass(frozen=True, slots=True)
class DirectorHost:
    name: str  # "dir1"
    addr: str  # on the inside LAN, the BGP session's local address
    netns: str


@dataclass(slots=True)
class EcmpLab:
    """The namespaces of the ECMP lab and the processes started in them."""

    base: Lab  # client, router and real servers; ``base.director`` is dir1
    directors: tuple[DirectorHost, ...]
    workdir: Path
    router: str
    ports: tuple[int, ...] = (80,)  # a virtual service on each
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @property
    def vip(self) -> str:
        return self.base.vip

    @property
    def client(self) -> str:
        return self.base.client

    def view(self, director: DirectorHost) -> Lab:
        """The lab as one director sees it (for a ``Daemon`` in that namespace)."""
        return dataclasses.replace(self.base, director=director.netns, backends=[])

    def run(
        self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.base.run(ns, argv, check=check, timeout=timeout)

    def rules(self) -> str:
        """One DR service per port over both real servers, scheduled by mh with the
        port in the hash (``-b mh-port``): the same on every director, so each director
        sends a given flow to the same real server."""
        lines: list[str] = []
        for port in self.ports:
            lines.append(f"-A -t {self.vip}:{port} -s mh -b mh-port")
            lines += [f"-a -t {self.vip}:{port} -r {rs.addr}:{port} -g -w 1"
                      for rs in self.base.real_servers]  # fmt: skip
        return "\n".join(lines) + "\n"


def missing_program() -> str | None:
    """The first of BIRD's and ExaBGP's programs this machine lacks, if any."""
    for program in PROGRAMS:
        if shutil.which(program) is None:
            return program
    return None


def named(
    prefix: str, workdir: Path, directors: int = 3, ports: tuple[int, ...] = (80,)
) -> EcmpLab:
    if not 2 <= directors <= len(DIRECTOR_ADDRS):
        raise ValueError(f"directors: 2 to {len(DIRECTOR_ADDRS)}, not {directors}")
    hosts = tuple(
        DirectorHost(f"dir{i}", addr, f"{prefix}-dir{i}")
        for i, addr in enumerate(DIRECTOR_ADDRS[:directors], start=1)
    )
    servers = tuple(RealServerHost(n, a, f"{prefix}-{n}", "dr") for n, a in REAL_SERVERS)
    base = Lab(
        prefix=prefix,
        client=f"{prefix}-client",
        director=hosts[0].netns,
        real_servers=servers,
        vip=VIP,
        kind="ecmp",
        router=f"{prefix}-router",
    )
    return EcmpLab(base, hosts, workdir, f"{prefix}-router", ports)


def _build(lab: EcmpLab) -> None:
    from pyroute2 import NetNS

    up = topology._up
    hosts.create([lab.client, lab.router, *(d.netns for d in lab.directors),
                  *(rs.netns for rs in lab.base.real_servers)])  # fmt: skip
    with NetNS(lab.client) as ns:
        ns.link("add", ifname="eth0", kind="veth", peer={"ifname": "ext0", "net_ns_fd": lab.router})
        up(ns, "eth0", topology.CLIENT_ADDR, topology.OUTSIDE_PREFIXLEN)
        ns.route("add", dst="0.0.0.0/0", gateway=ROUTER_OUTSIDE)
    with NetNS(lab.router) as ns:
        up(ns, "ext0", ROUTER_OUTSIDE, topology.OUTSIDE_PREFIXLEN)
        ns.link("add", ifname="br0", kind="bridge")
        up(ns, "br0", ROUTER_INSIDE, topology.INSIDE_PREFIXLEN)
        for d in lab.directors:
            hosts.bridge_port(ns, "br0", d.name, d.netns)
        for rs in lab.base.real_servers:
            hosts.bridge_port(ns, "br0", rs.name, rs.netns)
    router = lab.router
    topology.set_sysctl(router, "net.ipv4.ip_forward", "1")
    topology.set_sysctl(router, "net.ipv4.fib_multipath_hash_policy", "1")  # L4 hash
    for d in lab.directors:
        with NetNS(d.netns) as ns:
            up(ns, "eth0", d.addr, topology.INSIDE_PREFIXLEN)
            lo = ns.link_lookup(ifname="lo")[0]
            ns.addr("add", index=lo, address=lab.vip, prefixlen=32)
            ns.route("add", dst="0.0.0.0/0", gateway=ROUTER_INSIDE)
        # The VIP is on every director and both real servers: none answers ARP for it
        # (the router reaches it by its BGP next hops, never by ARP).
        for key, value in (("arp_ignore", "1"), ("arp_announce", "2")):
            for conf in ("all", "eth0"):
                topology.set_sysctl(d.netns, f"net.ipv4.conf.{conf}.{key}", value)
    for rs in lab.base.real_servers:
        with NetNS(rs.netns) as ns:
            up(ns, "eth0", rs.addr, topology.INSIDE_PREFIXLEN)
            ns.route("add", dst="0.0.0.0/0", gateway=ROUTER_INSIDE)


def build(
    prefix: str | None = None,
    workdir: Path | None = None,
    directors: int = 3,
    ports: tuple[int, ...] = (80,),
) -> EcmpLab:
    """The namespaces, links, addresses and routes, the real servers prepared by
    ``dirctl realserver up --method dr``; nothing running yet.  Undone on failure."""
    prefix = prefix or topology.new_prefix("de")
    lab = named(prefix, workdir or Path("/run/director-lab") / prefix, directors, ports)
    try:
        lab.workdir.mkdir(parents=True, exist_ok=True)
        _build(lab)
        for rs in lab.base.real_servers:
            topology.realserver(lab.base, rs, "up", "--vip", lab.vip, "--method", "dr", "-q")
    except BaseException:
        teardown(lab)
        raise
    return lab


# --- configuration files --------------------------------------------------------------


def bird_config(lab: EcmpLab, log: Path) -> str:
    """BIRD 2: one eBGP session per director (passive: the directors' ExaBGP connect),
    import of their /32s only, and the kernel protocol merging equal routes into one
    multipath route (ECMP)."""
    sessions = "\n".join(
        f"protocol bgp {d.name} from directors {{ neighbor {d.addr} as {DIRECTOR_AS}; }}"
        for d in lab.directors
    )
    return f"""\
# generated by director.lab.ecmp for lab {lab.base.prefix}
log "{log}" all;
router id {ROUTER_INSIDE};

protocol device {{ scan time 10; }}

protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on limit {len(lab.directors)};
}}

filter director_vips {{
    if net ~ [ 198.51.100.0/24{{32,32}} ] then accept;
    reject;
}}

template bgp directors {{
    local {ROUTER_INSIDE} as {ROUTER_AS};
    passive on;
    hold time {HOLD_TIME};
    keepalive time 1;
    startup hold time {HOLD_TIME};
    error wait time 1, 5;
    ipv4 {{ import filter director_vips; export none; }};
}}

{sessions}
"""


def exabgp_config(lab: EcmpLab, d: DirectorHost, socket_path: Path) -> str:
    """ExaBGP on one director: a session to the router, and ``dirctl announce`` as
    the process whose lines ExaBGP turns into announcements and withdrawals."""
    run = f"{venv_program('dirctl')} --socket {socket_path} announce --vip {lab.vip}"
    return f"""\
# generated by director.lab.ecmp for lab {lab.base.prefix}
process announce-vips {{
    run {run};
    encoder text;
}}

neighbor {ROUTER_INSIDE} {{
    router-id {d.addr};
    local-address {d.addr};
    local-as {DIRECTOR_AS};
    peer-as {ROUTER_AS};
    hold-time {HOLD_TIME};
    api {{
        processes [ announce-vips ];
    }}
}}
"""


# ExaBGP as a foreground program of ours: root (it never drops privileges: the process
# it runs speaks to the 0600 control socket), no CLI pipes, no acknowledgements.
EXABGP_ENV = {
    "exabgp.daemon.daemonize": "false",
    "exabgp.daemon.user": "root",
    "exabgp.daemon.drop": "false",
    "exabgp.api.cli": "false",
    "exabgp.api.ack": "false",
    "exabgp.log.destination": "stdout",
    "exabgp.log.level": "INFO",
}


# --- processes ------------------------------------------------------------------------


def _spawn(lab: EcmpLab, key: str, ns: str, argv: Sequence[str], env: dict[str, str]) -> None:
    lab.procs[key] = hosts.spawn(lab.base.exec_argv(ns, argv), lab.workdir / f"{key}.log", env)


def bird_socket(lab: EcmpLab) -> Path:
    return lab.workdir / "bird.ctl"


def start_bird(lab: EcmpLab) -> None:
    conf = lab.workdir / "bird.conf"
    conf.write_text(bird_config(lab, lab.workdir / "bird.log"))
    argv = ["bird", "-f", "-c", str(conf), "-s", str(bird_socket(lab)),
            "-P", str(lab.workdir / "bird.pid")]  # fmt: skip
    _spawn(lab, "bird-run", lab.router, argv, {})
    deadline = time.monotonic() + 10
    while birdc(lab, "show status", check=False).returncode:
        if lab.procs["bird-run"].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bird did not start: {hosts.tail(lab.workdir / 'bird-run.log')}")
        time.sleep(0.05)


def birdc(lab: EcmpLab, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return lab.run(lab.router, ["birdc", "-s", str(bird_socket(lab)), *command.split()],
                   check=check, timeout=10)  # fmt: skip


def start_exabgp(lab: EcmpLab, d: DirectorHost) -> None:
    daemon = lab.daemons[d.name]
    conf = lab.workdir / f"exabgp-{d.name}.conf"
    conf.write_text(exabgp_config(lab, d, daemon.socket_path))
    env = {k.replace(".", "_"): v for k, v in EXABGP_ENV.items()}
    # The announce process runs this interpreter's dirctl, found by its path.
    _spawn(lab, f"exabgp-{d.name}", d.netns, ["exabgp", str(conf)], env)


def start_director(lab: EcmpLab, d: DirectorHost, *, check_interval: int = 1) -> Daemon:
    """directord in ``d`` with the lab's rules, a TCP check of each real server and
    ``sloppy_tcp`` on (a flow that another director began is taken mid-way)."""
    daemon = lab.daemons.get(d.name) or Daemon(lab.view(d), lab.workdir / d.name)
    lab.daemons[d.name] = daemon
    fresh = not daemon.rules_path.exists()
    daemon.start()
    if fresh:
        # dirctl's arguments (tuples: these are no programs' argv) and its input
        steps: list[tuple[tuple[str, ...], str | None]] = [
            (("restore",), lab.rules()),
            (("sysctl", "sloppy_tcp=1"), None),
        ]
        steps += [(("add-check", "-t", f"{lab.vip}:{port}", "--type", "tcp",
                    "--interval", str(check_interval), "--timeout", "1"), None)
                  for port in lab.ports]  # fmt: skip
        for args, text in steps:
            done = daemon.dirctl(*args, input=text)
            if done.returncode:
                raise RuntimeError(f"{d.name}: dirctl {' '.join(args)}: {done.stderr.strip()}")
    return daemon


def start(lab: EcmpLab, *, check_interval: int = 1) -> None:
    """BIRD, then on every director its daemon and its ExaBGP."""
    start_bird(lab)
    failed: list[BaseException] = []

    def one(d: DirectorHost) -> None:
        try:
            start_director(lab, d, check_interval=check_interval)
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    # The daemons start side by side (each takes a few seconds to be ready).
    threads = [threading.Thread(target=one, args=(d,)) for d in lab.directors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    for d in lab.directors:
        start_exabgp(lab, d)


def nexthops(lab: EcmpLab) -> set[str]:
    """The directors the router's kernel route to the VIP goes to now."""
    out = lab.run(lab.router, ["ip", "-j", "route", "show", f"{lab.vip}/32"]).stdout
    hops: set[str] = set()
    for route in json.loads(out or "[]"):
        if "gateway" in route:
            hops.add(route["gateway"])
        for hop in route.get("nexthops", []):
            hops.add(hop["gateway"])
    return hops


def wait_nexthops(lab: EcmpLab, wanted: set[str], timeout: float = 20.0) -> float:
    """Wait until the router's route to the VIP has exactly ``wanted`` next hops;
    the seconds it took."""
    start_at = time.monotonic()
    while (now := nexthops(lab)) != wanted:
        if time.monotonic() - start_at > timeout:
            raise TimeoutError(
                f"router's next hops for {lab.vip}: {sorted(now)}, not {sorted(wanted)}\n"
                + birdc(lab, "show protocols", check=False).stdout
            )
        time.sleep(0.05)
    return time.monotonic() - start_at


def director_for(lab: EcmpLab, sport: int, dport: int = 80) -> str:
    """The next hop the router's multipath hash gives a client's TCP flow
    (``ip route get`` with the flow's ports, as forwarding would hash it)."""
    out = lab.run(lab.router, ["ip", "-j", "route", "get", lab.vip, "from",
                               topology.CLIENT_ADDR, "iif", "ext0", "ipproto", "tcp",
                               "sport", str(sport), "dport", str(dport)]).stdout  # fmt: skip
    return str(json.loads(out)[0]["gateway"])


def crash_director(lab: EcmpLab, d: DirectorHost) -> None:
    """A director's directord dies as in a crash: SIGKILL to its supervisor and every
    process under it at once (killed alone, the daemon would be started again by the
    supervisor).  Its ExaBGP lives on."""
    daemon = lab.daemons[d.name]
    assert daemon.proc is not None and daemon.proc.poll() is None, f"{d.name}: not running"
    hosts.kill_all([daemon.proc.pid, *hosts.descendants(daemon.proc.pid)])
    daemon.proc.wait(timeout=10)


def teardown(lab: EcmpLab) -> None:
    """Stop every process the lab started, then remove its namespaces."""
    for daemon in lab.daemons.values():
        with contextlib.suppress(Exception):
            daemon.stop(timeout=10)
        daemon.kill()
    for proc in lab.procs.values():
        hosts.stop_process(proc)
    lab.procs.clear()
    topology.teardown(lab.base)


def log_tail(lab: EcmpLab, key: str) -> str:
    """The end of a process's log (``bird-run``, ``exabgp-dir1``, ...), for errors."""
    return hosts.tail(lab.workdir / f"{key}.log")
