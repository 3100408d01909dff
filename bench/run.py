"""Benchmark: requests/s through director NAT, DR and TUN, HAProxy, nftables DNAT, the
NFQUEUE accept-only ceiling and no balancer.

Builds the labs of SPEC §3 in namespaces of its own (the NAT lab; the DR lab, same
LAN and servers; the TUN lab, servers behind a router) and, in one run, measures from
the client to the VIP (or, for "direct", to rs1 itself):

* new-connection rate: ``ab -n N -c C`` (no keep-alive: one TCP connection per request)
* keep-alive rate:     ``ab -k -n N -c C``

for every answer size of ``--body-size`` (by default tiny answers, the server's name,
and 16 KiB ones), through
* director NAT: the real directord in the director namespace with the seed rules;
* director NAT over IPv6 (``director6``): the same service and servers with SPEC §3's
  IPv6 addresses (rules/seed-nat6.rules' port 80), in the nat6 lab, from the client's
  one IPv6 address (IPv6 clients are not spread: with ``--workers`` above 1 the case
  reports the workers it left idle as an error);
* HAProxy in TCP mode with as many threads (``nbthread``) as director has workers;
* kernel nftables DNAT, ``numgen inc mod 2`` over the same two servers;
* the NFQUEUE accept-only ceiling: the same kernel DNAT, and every packet of the
  service, both ways, queued to a minimal worker (``bench/nfq_accept.py``) that
  accepts it unchanged: the ceiling of any design where every packet passes a
  userspace worker (issue 11), which the report sets director NAT against;
* direct: rs1:80 reached through the director's plain IP forwarding, no balancer;
* director DR and director TUN: the same two-server service by ``-g`` and ``-i``, real
  servers prepared by ``dirctl realserver up`` (TUN: the userspace decapsulator).
  Replies bypass the director's NFQUEUE, so DR's keep-alive rate should be well above
  NAT's (issue 3's goal: 1.5x), which the report prints.

The real servers are nginx (``--backend nginx``, the default where nginx is
installed: one foreground nginx per real-server namespace, with a configuration file of
its own in a temporary directory, stopped at the end; never the packaged service) or
the lab's Python backends (``--backend python``).  For every balancer that runs as a
process (directord with its supervisor and workers, HAProxy, the accept-only workers)
the table also gives its CPU time per request: utime + stime from /proc/PID/stat of the
process and its descendants, read before and after each kind of run.

``--workers N`` runs directord with ``--workers N`` (always said, 1 included:
directord's own default is not one worker), HAProxy with ``nbthread N`` and N
accept-only workers.  directord's workers own shards of client addresses (by their
lowest bits: director/core/shard.py), so with N > 1 the client's connections leave
from 2N or more consecutive addresses from 203.0.113.10 in turn, one each (the
addresses on its eth0 and an nftables ``snat ... numgen inc`` table in its namespace,
both removed after the lab's cases), for every case alike; a director case whose
shard chain (DIRECTOR_SHARD_IN) queued nothing to one of its workers is an error.
With one worker the client keeps its one address and nothing is added.

It prints a table per answer size and director's ratio to each case; it is a program
that prints figures, never a test, and it does not fail because something is slow.
Every load is bounded (N requests, per-request and per-run timeouts) and the
namespaces are removed at the end, whatever happens.  Run as root: ``make bench`` or
``.venv/bin/python bench/run.py``.  The connection table at scale is measured
in-process by ``bench/table.py``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from director.core.shard import MAX_WORKERS, shard_bits_needed
from director.lab import topology
from director.lab.daemon import Daemon
from director.lab.topology import Lab
from director.shell.netfilter import SHARD_IN

TARGETS = (("198.18.0.2", 80), ("198.18.0.3", 8000))  # as in the seed's port 80 service
SEED_80 = "".join(
    [
        "-A -t 203.0.113.5:80 -s wlc\n",
        *(f"-a -t 203.0.113.5:80 -r {addr}:{port} -m -w 1\n" for addr, port in TARGETS),
    ]
)
TARGETS6 = (("2001:db8:2::2", 80), ("2001:db8:2::3", 8000))  # the nat6 lab's, the same
SEED6_80 = "".join(
    [
        "-A -t [2001:db8:1::100]:80 -s wlc\n",
        *(f"-a -t [2001:db8:1::100]:80 -r [{addr}]:{port} -m -w 1\n" for addr, port in TARGETS6),
    ]
)
NGINX_PORTS = (80, 8000)  # every port a case sends to (TARGETS, and the DR/TUN labs' 80)
CEILING_QUEUE = 7  # the accept-only workers' first queue (directord is stopped by then)
BODY_SIZES = (0, 16384)

DR_GOAL = 1.5
# Issue 11's goals on the 2-core lab with one worker, director NAT against HAProxy:
# (answer size, "new" or "keepalive", lowest ratio).
HAPROXY_GOALS = ((0, "keepalive", 0.6), (0, "new", 0.5), (16384, "keepalive", 0.5))
# Issue 12's: the kernel fast path at least as fast as HAProxy (1 thread), both kinds,
# both answer sizes.
FAST_GOAL = 1.0


@dataclass
class Figure:
    case: str
    body: int = 0  # bytes in each answer (0: the server's name only)
    new_rps: float | None = None
    keepalive_rps: float | None = None
    # CPU time of the balancer's processes per request, in µs (None: no such process)
    new_cpu_us: float | None = None
    keepalive_cpu_us: float | None = None
    failed: int = 0
    note: str = ""
    # With --rounds: each round's (new_rps, keepalive_rps); the figures above are their
    # medians.
    rounds: list[tuple[float | None, float | None]] = field(default_factory=list)


def combined(runs: list[Figure]) -> Figure:
    """One case's figures over rounds: the median of each rate and CPU figure, the
    failures summed, the notes kept, every round's rates remembered."""

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    first = runs[0]
    return Figure(
        first.case,
        first.body,
        median([f.new_rps for f in runs]),
        median([f.keepalive_rps for f in runs]),
        median([f.new_cpu_us for f in runs]),
        median([f.keepalive_cpu_us for f in runs]),
        sum(f.failed for f in runs),
        " ".join(dict.fromkeys(f.note.strip() for f in runs if f.note.strip())),
        [(f.new_rps, f.keepalive_rps) for f in runs],
    )


def ratio_of(mine: Figure, other: Figure, kind: str) -> tuple[float | None, list[float]]:
    """``mine`` over ``other`` for ``kind`` ("new" or "keepalive"): with rounds, the
    median of the rounds' own ratios (each of two cases measured minutes apart, not a
    whole case apart: robust to a machine whose speed drifts), and those ratios."""
    at = 0 if kind == "new" else 1
    pairs = [(a[at], b[at]) for a, b in zip(mine.rounds, other.rounds, strict=False)]
    per_round = [a / b for a, b in pairs if a and b]
    if len(per_round) > 1:
        return statistics.median(per_round), per_round
    a, b = getattr(mine, f"{kind}_rps"), getattr(other, f"{kind}_rps")
    return (a / b if a and b else None), per_round


@dataclass(frozen=True)
class Target:
    """Where a case's client sends, and the processes whose CPU time it costs."""

    url: str
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Settings:
    workers: int = 1  # directord's workers, HAProxy's threads, accept-only workers
    clients: tuple[str, ...] = (topology.CLIENT_ADDR,)  # the client's source addresses

    @property
    def daemon_args(self) -> tuple[str, ...]:
        # Always said: directord's own default is not one worker.
        return ("--workers", str(self.workers))


def client_addresses(workers: int, first: str = topology.CLIENT_ADDR) -> tuple[str, ...]:
    """The client's source addresses for ``workers`` directord workers: ``first`` alone
    for one; otherwise consecutive addresses from ``first``, a whole number of rounds
    of the shard values (director/core/shard.py: a client address's lowest bits when
    no service is persistent, as here) and at least two per worker, so every worker
    owns the same number of them where ``workers`` is a power of two."""
    if workers == 1:
        return (first,)
    values = 1 << shard_bits_needed(workers)
    count = values * -(-2 * workers // values)
    start = ipaddress.IPv4Address(first)
    return tuple(str(start + i) for i in range(count))


# -- CPU time of a process tree, from /proc -----------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime + cutime + cstime in clock ticks) of every process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # proc_pid_stat(5): the name is in parentheses and may hold anything; the
        # fields after the last ")" start with field 3 (state).
        fields = raw[raw.rindex(")") + 2 :].split()
        ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        table[int(entry.name)] = (int(fields[1]), ticks)
    return table


def tree_cpu_seconds(roots: tuple[int, ...]) -> float:
    """CPU seconds used so far by ``roots`` and all their descendants.  cutime and
    cstime hold the children a member has reaped, so a worker that ended meanwhile
    still counts, and nothing is counted twice."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    ticks = 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        ticks += table[pid][1]
        todo.extend(children.get(pid, ()))
    return ticks / CLK_TCK


# -- the client ---------------------------------------------------------------------------


def run_ab(
    lab: Lab, url: str, n: int, c: int, keepalive: bool, limit: float
) -> tuple[float, int, int]:
    """One bounded ab run from the client: (requests/s, failed + non-2xx + missing,
    complete requests)."""
    argv = ["ab", "-q", "-r", "-s", "10", "-n", str(n), "-c", str(c)]
    if keepalive:
        argv.append("-k")
    done = lab.run(lab.client, [*argv, url], check=False, timeout=limit)
    rps, complete, bad = 0.0, 0, 0
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        words = value.split()
        if key == "Requests per second":
            rps = float(words[0])
        elif key == "Complete requests":
            complete = int(words[0])
        elif key == "Non-2xx responses":
            bad += int(words[0])
        elif key.strip() == "(Connect":
            # "(Connect: 0, Receive: 0, Length: 7, Exceptions: 0)": the servers' answers
            # differ in length by design (each names itself), so Length is no failure.
            counts = dict(part.strip(" ()").split(": ") for part in line.split(","))
            bad += sum(int(v) for k, v in counts.items() if k != "Length")
    if done.returncode and not complete:
        raise RuntimeError(f"ab failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return rps, bad + (n - complete), complete


def measure(lab: Lab, figure: Figure, target: Target, args: argparse.Namespace) -> None:
    """The median of ``args.repeat`` runs of each kind, after a short warm-up; the
    balancer's CPU time over all runs of a kind, per request completed."""
    run_ab(lab, target.url, min(500, args.requests), args.concurrency, True, args.run_timeout)
    for keepalive in (False, True):
        rates: list[float] = []
        completed = 0
        cpu_before = tree_cpu_seconds(target.pids)
        for _ in range(args.repeat):
            try:
                rps, bad, complete = run_ab(
                    lab, target.url, args.requests, args.concurrency, keepalive, args.run_timeout
                )
            except subprocess.TimeoutExpired:
                kind = "-k" if keepalive else "new"
                figure.note += f" {kind}: a run took over {args.run_timeout:.0f} s;"
                continue
            figure.failed += bad
            completed += complete
            rates.append(rps)
        cpu = tree_cpu_seconds(target.pids) - cpu_before
        cpu_us = cpu * 1e6 / completed if target.pids and completed else None
        median = statistics.median(rates) if rates else None
        if keepalive:
            figure.keepalive_rps, figure.keepalive_cpu_us = median, cpu_us
        else:
            figure.new_rps, figure.new_cpu_us = median, cpu_us


# -- the real servers ---------------------------------------------------------------------


def body_of(name: str, port: int, pad: int) -> bytes:
    """The answer of real server ``name`` on ``port``: its name, then dots up to ``pad``
    bytes, as the lab's Python backend pads (director/lab/backend.py)."""
    body = f"{name} port {port}\n".encode()
    if len(body) < pad:
        body += b"." * (pad - len(body) - 1) + b"\n"
    return body


def nginx_conf(root: Path, rs: topology.RealServerHost) -> str:
    """A whole nginx configuration for one real server: foreground, its files under
    ``root``, one worker (a real server here has a share of a 2-core box), listening
    on every address (DR and TUN servers get the VIP on lo) on NGINX_PORTS."""
    servers = "".join(
        f"""
    server {{
        listen {port} backlog=4096;
        listen [::]:{port} backlog=4096;
        root {root / str(port)};
        location / {{ try_files /body =404; }}
    }}"""
        for port in NGINX_PORTS
    )
    temp = root / "temp"
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};{servers}
}}
"""


def nginx_program() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


def start_nginx(lab: Lab, work: Path, pad: int, timeout: float = 10.0) -> None:
    """One foreground nginx per real-server namespace, each with its own configuration
    under ``work`` (which nginx's unprivileged workers must be able to pass through;
    its own files are made readable to them); put in ``lab.backends``,
    which ``stop_backends`` and ``topology.teardown`` end."""
    program = nginx_program()
    if program is None:
        raise RuntimeError("nginx is not installed: make deps-bench, or --backend python")
    for rs in lab.real_servers:
        root = work / f"nginx-{rs.name}"
        for port in NGINX_PORTS:
            (root / str(port)).mkdir(parents=True)
            (root / str(port) / "body").write_bytes(body_of(rs.name, port, pad))
        (root / "temp").mkdir()
        conf = root / "nginx.conf"
        conf.write_text(nginx_conf(root, rs))
        for path in (root, *root.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        argv = [program, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
        lab.backends.append(
            subprocess.Popen(
                lab.exec_argv(rs.netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    deadline = time.monotonic() + timeout
    for rs, proc in zip(lab.real_servers, lab.backends, strict=True):
        while not _listening(lab, rs.netns, NGINX_PORTS):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                log = work / f"nginx-{rs.name}" / "error.log"
                if log.exists():
                    err += log.read_text(errors="replace")
                raise RuntimeError(f"nginx {rs.name} exited {proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx {rs.name} did not listen on {list(NGINX_PORTS)}")
            time.sleep(0.05)


def _listening(lab: Lab, ns: str, ports: tuple[int, ...]) -> bool:
    out = lab.run(ns, ["ss", "-Hltn"], check=False).stdout
    local = {line.split()[3].rsplit(":", 1)[-1] for line in out.splitlines() if line.split()}
    return all(str(p) in local for p in ports)


def start_backends(lab: Lab, work: Path, backend: str, pad: int) -> None:
    if backend == "nginx":
        start_nginx(lab, work, pad)
    else:
        topology.start_backends(lab, pad=pad)


def stop_backends(lab: Lab) -> None:
    """End the real servers' processes (SIGTERM; nginx's is a fast shutdown)."""
    for proc in lab.backends:
        if proc.poll() is None:
            proc.terminate()
    for proc in lab.backends:
        _reap(proc)
    lab.backends.clear()


def _reap(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


# -- the balancers, each set up and removed around its measurement ----------------------


Setup = Callable[[Lab, Path, Settings], AbstractContextManager[Target]]


@contextmanager
def no_balancer(lab: Lab, work: Path, settings: Settings) -> Iterator[Target]:
    yield Target("http://198.18.0.2:80/")


def _dnat_ruleset(lab: Lab, table: str) -> str:
    """nftables DNAT of VIP:80 over TARGETS, ``numgen inc mod 2``."""
    elements = ", ".join(f"{i} : {addr} . {port}" for i, (addr, port) in enumerate(TARGETS))
    return f"""
table ip {table} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {lab.vip} tcp dport 80 \\
            dnat ip to numgen inc mod {len(TARGETS)} map {{ {elements} }}
    }}
}}
"""


@contextmanager
def _nft_table(
    lab: Lab, work: Path, table: str, ruleset: str | None = None, ns: str | None = None
) -> Iterator[None]:
    """The nftables table ``table`` (by default the DNAT of ``_dnat_ruleset``) in
    namespace ``ns`` (by default the director's) while the block runs."""
    ns = ns or lab.director
    path = work / f"{table}.nft"
    path.write_text(_dnat_ruleset(lab, table) if ruleset is None else ruleset)
    _run(lab, ["nft", "-f", str(path)], ns)
    try:
        yield
    finally:
        lab.run(ns, ["nft", "delete", "table", "ip", table], check=False)


def _run(lab: Lab, argv: list[str], ns: str | None = None) -> None:
    """Run ``argv`` in namespace ``ns`` (by default the director's); its stderr is the
    error if it fails."""
    done = lab.run(ns or lab.director, argv, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()[-300:]}")


# -- the client's source addresses ----------------------------------------------------------

CLIENT_TABLE = "director_bench_clients"
CLIENT_IF = "eth0"


def _snat_ruleset(table: str, first: str, clients: tuple[str, ...]) -> str:
    """nftables SNAT of the client's new connections from ``first`` over ``clients``,
    ``numgen inc``: one address after the other, a connection each (the nat chain
    sees only a connection's first packet)."""
    elements = ", ".join(f"{i} : {addr}" for i, addr in enumerate(clients))
    return f"""
table ip {table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{CLIENT_IF}" ip saddr {first} \\
            snat ip to numgen inc mod {len(clients)} map {{ {elements} }}
    }}
}}
"""


@contextmanager
def client_spread(lab: Lab, work: Path, settings: Settings) -> Iterator[None]:
    """With several workers, each owning a shard of client addresses, a benchmark from
    one address would load one worker only: while the block runs, the client's
    connections leave from ``settings.clients`` in turn (the extra addresses on its
    eth0, so it answers ARP for them, and an SNAT table in its namespace), for every
    case alike.  One address, or the IPv6 lab: nothing is changed."""
    extra = [addr for addr in settings.clients if addr != lab.client_addr]
    if not extra or lab.family == 6:
        yield
        return
    added: list[str] = []
    try:
        for addr in extra:
            _run(lab, ["ip", "addr", "add", f"{addr}/32", "dev", CLIENT_IF], lab.client)
            added.append(addr)
        ruleset = _snat_ruleset(CLIENT_TABLE, lab.client_addr, settings.clients)
        with _nft_table(lab, work, CLIENT_TABLE, ruleset, lab.client):
            yield
    finally:
        for addr in added:
            lab.run(lab.client, ["ip", "addr", "del", f"{addr}/32", "dev", CLIENT_IF], check=False)


@contextmanager
def nftables_dnat(lab: Lab, work: Path, settings: Settings) -> Iterator[Target]:
    with _nft_table(lab, work, "director_bench"):
        yield Target(f"http://{lab.vip}/")


@contextmanager
def nfqueue_ceiling(lab: Lab, work: Path, settings: Settings) -> Iterator[Target]:
    """Kernel DNAT does the NAT; every packet of connections to VIP:80, requests and
    replies alike (conntrack's original tuple matches both), goes at FORWARD to one of
    ``settings.workers`` accept-only workers by the iptables NFQUEUE target, as
    director's own hooks queue (this kernel has no nft ``queue``).  Several queues
    are spread by ``--queue-balance``, whose flow hash is the same both ways once the
    kernel has done the NAT."""
    first, last = CEILING_QUEUE, CEILING_QUEUE + settings.workers - 1
    target = (
        ["--queue-num", str(first)] if first == last else ["--queue-balance", f"{first}:{last}"]
    )
    rule = ["FORWARD", "-p", "tcp", "-m", "conntrack", "--ctorigdst", lab.vip,
            "--ctorigdstport", "80", "-j", "NFQUEUE", *target]  # fmt: skip
    script = Path(__file__).resolve().with_name("nfq_accept.py")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for queue in range(first, last + 1):
            argv = [sys.executable, str(script), "--queue-num", str(queue)]
            procs.append(
                subprocess.Popen(
                    lab.exec_argv(lab.director, argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        for proc in procs:
            _wait_ready_line(proc, "accept-only worker")
        with _nft_table(lab, work, "director_bench_ceiling"):
            _run(lab, ["iptables", "-w", "-I", *rule])
            try:
                yield Target(f"http://{lab.vip}/", tuple(p.pid for p in procs))
                # A ceiling its workers never saw would be no ceiling at all.
                if not _queued_packets(lab):
                    raise RuntimeError("the accept-only workers were queued no packet")
            finally:
                lab.run(lab.director, ["iptables", "-w", "-D", *rule], check=False)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            _reap(proc)


def _queued_packets(lab: Lab) -> int:
    """Packets the NFQUEUE rules at FORWARD have sent to a queue so far."""
    out = lab.run(lab.director, ["iptables", "-w", "-nvxL", "FORWARD"], check=False).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if " NFQUEUE " in line)


def _wait_ready_line(proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    """Wait for the line ``ready`` on ``proc``'s stdout."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if line.strip() == b"ready":
            return
        if not line:  # the end of its output: it exited
            proc.wait(timeout=5)
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{what} exited {proc.returncode}: {err.strip()[-300:]}")
    raise RuntimeError(f"{what} not ready in {timeout:.0f} s")


@contextmanager
def haproxy(lab: Lab, work: Path, settings: Settings) -> Iterator[Target]:
    servers = "\n".join(
        f"    server rs{i} {addr}:{port}" for i, (addr, port) in enumerate(TARGETS, 1)
    )
    cfg = work / "haproxy.cfg"
    cfg.write_text(
        f"""global
    nbthread {settings.workers}
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend vip
    bind {lab.vip}:80
    default_backend pool
backend pool
    balance roundrobin
{servers}
"""
    )
    haproxy_bin = shutil.which("haproxy") or "haproxy"
    proc = subprocess.Popen(
        lab.exec_argv(lab.director, [haproxy_bin, "-db", "-f", str(cfg)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(lab, proc, "haproxy")
        yield Target(f"http://{lab.vip}/", (proc.pid,))
    finally:
        proc.terminate()
        _reap(proc)


def _wait_listening(lab: Lab, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{what} exited {proc.returncode}: {err.strip()[-300:]}")
        out = lab.run(lab.director, ["ss", "-Hltn", f"src {lab.vip}:80"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {lab.vip}:80")


@contextmanager
def _daemon(
    lab: Lab, workdir: Path, settings: Settings, extra: tuple[str, ...] = ()
) -> Iterator[Daemon]:
    daemon = Daemon(lab, workdir, (*settings.daemon_args, *extra))
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        if code:
            print(f"note: directord exited {code} on SIGTERM", file=sys.stderr)


def director_nat(
    lab: Lab, work: Path, settings: Settings, name: str = "director",
    setup: tuple[tuple[str, ...], ...] = (),
) -> AbstractContextManager[Target]:  # fmt: skip
    """director NAT over the seed's port 80 service, after the dirctl commands ``setup``."""
    return _director(lab, work / name, settings, SEED_80, setup)


def director_nat6(lab: Lab, work: Path, settings: Settings) -> AbstractContextManager[Target]:
    """director NAT over IPv6: the seed's port 80 service with the nat6 lab's addresses."""
    return _director(lab, work / "director6", settings, SEED6_80)


def director_lab_rules(lab: Lab, work: Path, settings: Settings) -> AbstractContextManager[Target]:
    """directord with one port-80 service over the lab's servers by their own method."""
    rules = lab.rules(port=80, scheduler="wlc")
    return _director(lab, work / f"director-{lab.kind}", settings, rules)


def director_fast(lab: Lab, work: Path, settings: Settings) -> AbstractContextManager[Target]:
    """director NAT on the kernel fast path: the worker schedules each flow's first
    packet, conntrack's NAT carries the rest."""
    return _director(lab, work / "director-fast", settings, SEED_80, fast=True)


@contextmanager
def _director(
    lab: Lab,
    workdir: Path,
    settings: Settings,
    rules: str,
    setup: tuple[tuple[str, ...], ...] = (),
    fast: bool = False,
) -> Iterator[Target]:
    extra = ("--fast-path", "kernel") if fast else ()
    with _daemon(lab, workdir, settings, extra) as daemon:
        done = daemon.dirctl("restore", input=rules)
        if done.returncode:
            raise RuntimeError(f"dirctl restore: {done.stderr.strip()}")
        for command in setup:
            done = daemon.dirctl(*command)
            if done.returncode:
                raise RuntimeError(f"dirctl {command[0]}: {done.stderr.strip()}")
        assert daemon.pid is not None
        # The supervisor, its daemon child and whatever workers that one starts.
        yield Target(lab.url(), (daemon.pid,))
        if fast:
            return  # its new flows are queued from mangle PREROUTING, not DIRECTOR_SHARD_IN
        # Figures of N workers where one did all the work would be no such figures.
        queued = _shard_queued(lab)
        idle = sorted(queue for queue, packets in queued.items() if not packets)
        if len(queued) != settings.workers or idle:
            raise RuntimeError(
                f"{settings.workers} worker(s) but packets per request queue {queued}"
                f" (from {SHARD_IN}): queue(s) {idle} got none"
            )


def _shard_queued(lab: Lab) -> dict[int, int]:
    """Requests the shard chain has sent to each worker's queue so far (its NFQUEUE
    rules' packet counters, by queue number: one queue per worker)."""
    program = "ip6tables" if lab.family == 6 else "iptables"
    out = lab.run(lab.director, [program, "-w", "-nvxL", SHARD_IN], check=False).stdout
    queued: dict[int, int] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) > 2 and words[2] == "NFQUEUE" and "num" in words:
            queue = int(words[words.index("num") + 1])
            queued[queue] = queued.get(queue, 0) + int(words[0])
    return queued


CASES: dict[str, tuple[str, Setup]] = {
    "direct": ("direct to rs1, no balancer", no_balancer),
    "nftables": ("kernel nftables DNAT", nftables_dnat),
    "ceiling": ("NFQUEUE accept-only ceiling", nfqueue_ceiling),
    "haproxy": ("HAProxy tcp", haproxy),
    "director": ("director NAT", director_nat),
    "director6": ("director NAT, IPv6", director_nat6),
    # The DoS defences on: secure_tcp always, drop_entry and drop_packet automatic (armed,
    # they act when memory runs short).  Always on, those two drop connections by design
    # (drop_packet one new connection in am_droprate; drop_entry half-open entries from a
    # random 1/32 of the table each second, and one such drop stalls ab for its timeout).
    "director-defended": (
        "director NAT, defences on",
        lambda lab, work, settings: director_nat(
            lab,
            work,
            settings,
            "director-defended",
            (("sysctl", "secure_tcp=3", "drop_entry=1", "drop_packet=1"),),
        ),
    ),
    # The master sync daemon multicasting the connections on the real servers' LAN
    # (what sync costs the packet path; no backup is needed to measure it).
    "director-sync": (
        "director NAT, sync master",
        lambda lab, work, settings: director_nat(
            lab,
            work,
            settings,
            "director-sync",
            (("start-daemon", "master", "--mcast-interface", "br0", "--syncid", "1"),),
        ),
    ),
    "director-fast": ("director NAT, kernel fast path", director_fast),
    "director-dr": ("director DR", director_lab_rules),
    "director-tun": ("director TUN (user decap)", director_lab_rules),
}
# the others run in the NAT lab
LAB_KIND = {"director6": "nat6", "director-dr": "dr", "director-tun": "tun"}


def title_of(key: str, settings: Settings) -> str:
    """A case's row title, with the worker or thread count where it has one."""
    title = CASES[key][0]
    if key == "haproxy":
        return f"{title}, nbthread {settings.workers}"
    if key == "ceiling" and settings.workers > 1:
        return f"{title}, {settings.workers} workers"
    if key.startswith("director"):
        return f"{title}, {settings.workers} worker{'s' if settings.workers > 1 else ''}"
    return title


# -- the report -----------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rounds(per_round: list[float]) -> str:
    if len(per_round) < 2:
        return ""
    return f", the median of {len(per_round)} rounds: " + " ".join(f"{r:.2f}" for r in per_round)


def _size(body: int) -> str:
    if not body:
        return "tiny answers (the server's name)"
    return f"answers of {body:,} bytes" + (f" ({body // 1024} KiB)" if body % 1024 == 0 else "")


def _from(clients: tuple[str, ...]) -> str:
    if len(clients) == 1:
        return ""
    return f" ({len(clients)} addresses, {clients[0]} to {clients[-1]}, in turn)"


def report(figures: list[Figure], args: argparse.Namespace, settings: Settings) -> None:
    sys.stderr.flush()
    nat_title = title_of("director", settings)
    for body in dict.fromkeys(f.body for f in figures):
        rows = [f for f in figures if f.body == body]
        print()
        print(
            f"requests/s from the client{_from(settings.clients)}, {_size(body)}: median "
            f"of {args.repeat} runs of ab -n {args.requests} -c {args.concurrency} (new "
            f"connections) and with -k; real servers: {args.backend}"
        )
        print("CPU: the balancer's processes (utime + stime), µs per request, all runs")
        print(
            f"{'case':<38} {'new conn/s':>11} {'CPU µs':>7} {'keep-alive/s':>13} "
            f"{'CPU µs':>7} {'failed':>7}  note"
        )
        for f in rows:
            print(
                f"{f.case:<38} {_fmt(f.new_rps):>11} {_fmt_us(f.new_cpu_us):>7} "
                f"{_fmt(f.keepalive_rps):>13} {_fmt_us(f.keepalive_cpu_us):>7} "
                f"{f.failed:>7}  {f.note.strip()}"
            )
        mine = next((f for f in rows if f.case == nat_title), None)
        if mine is None:
            continue
        print()
        print(f"{'director NAT relative to':<38} {'new conn':>11} {'keep-alive':>21}")
        for f in rows:
            if f is not mine:
                new, keepalive = ratio_of(mine, f, "new")[0], ratio_of(mine, f, "keepalive")[0]
                print(f"{f.case:<38} {_times(new):>11} {_times(keepalive):>21}")
        _goals(rows, mine, body, settings)


def _goals(rows: list[Figure], mine: Figure, body: int, settings: Settings) -> None:
    """Issue 11's goals against HAProxy, and issue 3's DR goal, where measured."""
    lines: list[str] = []
    proxy = next((f for f in rows if f.case == title_of("haproxy", settings)), None)
    for goal_body, kind, goal in HAPROXY_GOALS:
        if proxy is None or goal_body != body:
            continue
        times, per_round = ratio_of(mine, proxy, kind)
        if times is not None:
            verdict = "meets" if times >= goal else "misses"
            what = "keep-alive" if kind == "keepalive" else "new connections"
            lines.append(
                f"director NAT {what} vs {proxy.case}: {times:.2f}x{_rounds(per_round)} "
                f"({verdict} issue 11's {goal}x goal, set for one worker)"
            )
    fast = next((f for f in rows if f.case == title_of("director-fast", settings)), None)
    for kind in ("new", "keepalive"):
        times, per_round = ratio_of(fast, proxy, kind) if fast and proxy else (None, [])
        if proxy is not None and times is not None:
            verdict = "meets" if times >= FAST_GOAL else "misses"
            what = "keep-alive" if kind == "keepalive" else "new connections"
            lines.append(
                f"director fast path {what} vs {proxy.case}: {times:.2f}x"
                f"{_rounds(per_round)} ({verdict} issue 12's {FAST_GOAL}x goal)"
            )
    ceiling = next((f for f in rows if f.case == title_of("ceiling", settings)), None)
    times, per_round = ratio_of(mine, ceiling, "keepalive") if ceiling else (None, [])
    if times is not None:
        lines.append(
            f"director NAT keep-alive vs the accept-only ceiling: {times:.2f}x"
            f"{_rounds(per_round)} (1.00x is all an every-packet design can reach here)"
        )
    dr = next((f for f in rows if f.case == title_of("director-dr", settings)), None)
    times, per_round = ratio_of(dr, mine, "keepalive") if dr else (None, [])
    if times is not None:
        verdict = "meets" if times >= DR_GOAL else "misses"
        lines.append(
            f"director DR keep-alive vs director NAT: {times:.2f}x{_rounds(per_round)} "
            f"({verdict} the {DR_GOAL}x goal of issue 3)"
        )
    if lines:
        print()
        print("\n".join(lines))


# -- running it -----------------------------------------------------------------------------


def run_cases(
    kind: str,
    keys: list[str],
    figures: list[Figure],
    work: Path,
    args: argparse.Namespace,
    settings: Settings,
) -> int:
    """Build the lab of ``kind``, measure ``keys`` in it for every answer size, remove
    it; the number of errors."""
    errors = 0
    lab = topology.build(kind=kind)
    try:
        with client_spread(lab, work, settings):
            for body in args.body_sizes:
                errors += _run_size(lab, body, keys, figures, work, args, settings)
    finally:
        topology.teardown(lab)
    return errors


def _run_size(
    lab: Lab,
    body: int,
    keys: list[str],
    figures: list[Figure],
    work: Path,
    args: argparse.Namespace,
    settings: Settings,
) -> int:
    """Measure ``keys`` with answers of ``body`` bytes; the number of errors."""
    errors = 0
    # Each size has its files apart: directord's rules and state start afresh.
    size_work = work / f"{lab.kind}-{body}"
    size_work.mkdir(mode=0o711)
    start_backends(lab, size_work, args.backend, body)
    runs: dict[str, list[Figure]] = {key: [] for key in keys}
    try:
        for turn in range(args.rounds):
            # Each round's cases have their files apart too (directord's state).
            round_work = size_work / f"round-{turn + 1}"
            round_work.mkdir(mode=0o711)
            for key in keys:
                setup = CASES[key][1]
                figure = Figure(title_of(key, settings), body)
                runs[key].append(figure)
                said = f", round {turn + 1} of {args.rounds}" if args.rounds > 1 else ""
                print(f"measuring: {figure.case}, {_size(body)}{said}", file=sys.stderr,
                      flush=True)  # fmt: skip
                try:
                    with setup(lab, round_work, settings) as target:
                        measure(lab, figure, target, args)
                except Exception as err:  # one broken case must not hide the others
                    errors += 1
                    figure.note = f"error: {err}".splitlines()[0][:200]
    finally:
        stop_backends(lab)
        figures.extend(combined(r) for r in runs.values() if r)
    return errors


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated byte counts") from None
    if not sizes:
        raise argparse.ArgumentTypeError("at least one size")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="director benchmark (root; namespaces only)")
    parser.add_argument("-n", "--requests", type=int, default=20000, help="per ab run")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-r", "--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case in turn this many times (each time -r runs); figures are "
        "the medians over rounds, ratios the median of each round's own ratio",
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--run-timeout", type=float, default=120.0, help="seconds per ab run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--body-size",
        dest="body_sizes",
        type=_sizes,
        default=list(BODY_SIZES),
        metavar="BYTES[,BYTES...]",
        help="the answer sizes to measure, each a table (default 0,16384; 0 is just the "
        "server's name, some 20 bytes)",
    )
    parser.add_argument(
        "--backend",
        choices=("nginx", "python"),
        default="nginx" if nginx_program() else "python",
        help="the real servers: nginx (default where installed) or the lab's Python backends",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="directord's workers, HAProxy's nbthread and the accept-only workers "
        "(default 1); with more than one, the client's connections leave from several "
        "addresses of 203.0.113.0/24 in turn, for every case, so every worker's shard "
        "of clients is loaded",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the benchmark builds network namespaces")
    for program in ("ab", "ip"):
        if shutil.which(program) is None:
            parser.error(f"{program} is not installed: make deps-bench")
    if args.backend == "nginx" and nginx_program() is None:
        parser.error("nginx is not installed: make deps-bench, or --backend python")
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    args.requests = max(1, min(args.requests, 100_000))  # bounded load
    args.concurrency = max(1, min(args.concurrency, 200))
    args.repeat = max(1, min(args.repeat, 10))
    args.rounds = max(1, min(args.rounds, 10))
    args.body_sizes = list(dict.fromkeys(max(0, min(b, 1 << 20)) for b in args.body_sizes))
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers: 1 to {MAX_WORKERS} (directord's limit)")
    settings = Settings(workers=args.workers, clients=client_addresses(args.workers))

    figures: list[Figure] = []
    errors = 0
    work = Path(tempfile.mkdtemp(prefix="director-bench-"))
    work.chmod(0o711)  # nginx's unprivileged workers pass through to their files
    try:
        # One lab at a time: the NAT lab for most cases, then the nat6, DR and TUN labs.
        for kind in dict.fromkeys(LAB_KIND.get(key, "nat") for key in chosen):
            keys = [key for key in chosen if LAB_KIND.get(key, "nat") == kind]
            errors += run_cases(kind, keys, figures, work, args, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(figures, args, settings)
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
