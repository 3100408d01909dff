"""Small helpers for the netns tests: clients in the lab's client namespace."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from director.lab.daemon import Daemon
from director.lab.topology import Lab, RealServerHost

SEED_RULES_FILE = Path(__file__).resolve().parents[2] / "rules" / "seed-nat.rules"
SEED6_RULES_FILE = SEED_RULES_FILE.with_name("seed-nat6.rules")
CURL_REFUSED = 7  # curl: "Failed to connect" (RST or ICMP unreachable)
CURL_TIMEOUT = 28

# A transfer that outlasts a restart (python3 -c): the server sends one file once, as
# fast as TCP lets it go (argv: file, port); the client reads it at about 4 MB/s, so
# 20 MB last some 5 s, says "started" after the first 2 MiB and prints the byte count
# and SHA-256 at the end (argv: address, port, and the source address, "" for any).
# ``transfer()`` runs the pair.
TRANSFER_SERVER = """
import socket, sys
data = open(sys.argv[1], "rb").read()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[2])))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
conn.sendall(data)
conn.close()
"""

# Reads at about 4 MB/s, so the transfer lasts some 5 s, and prints the SHA-256.
TRANSFER_CLIENT = """
import hashlib, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30,
                             source_address=(sys.argv[3], 0) if sys.argv[3] else None)
digest, got, start = hashlib.sha256(), 0, time.monotonic()
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    digest.update(chunk)
    if got < 2 << 20 <= got + len(chunk):
        print("started", flush=True)
    got += len(chunk)
    ahead = got / 4e6 - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(got, digest.hexdigest(), flush=True)
"""


# Where a test's daemon serves its metrics, inside the lab's director namespace (each
# module has a lab of its own, so one port does for all).
METRICS = "127.0.0.1:9108"


@contextmanager
def running(d: Daemon) -> Iterator[Daemon]:
    """``d`` started, and at the end stopped by SIGTERM (which must exit 0, if it is
    still running) and killed whatever happened."""
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            code = d.stop()
            assert code == 0, f"directord exited {code} on SIGTERM:\n{d.log()}"
        d.kill()


@contextmanager
def transfer(
    lab: Lab, rs: RealServerHost, blob: Path, port: int, source: str = ""
) -> Iterator[subprocess.Popen[str]]:
    """``blob`` served by ``rs`` on ``port`` and read by the client from the VIP (from
    the address ``source``, if given): the client's process, under way (its first 2 MiB
    in); both are gone at the end."""
    procs: list[subprocess.Popen[str]] = []
    try:
        server = subprocess.Popen(
            lab.exec_argv(rs.netns, [sys.executable, "-c", TRANSFER_SERVER, str(blob), str(port)]),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = subprocess.Popen(
            lab.exec_argv(lab.client, [sys.executable, "-c", TRANSFER_CLIENT, lab.vip, str(port),
                                       source]),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(client)
        assert client.stdout is not None and client.stdout.readline() == "started\n"
        assert client.poll() is None, "the transfer ended before it was under way"
        yield client
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# A TCP connection to the VIP, opened from one address and held (idle): on each line
# read from stdin it asks for the page over it and prints the status line; it ends with
# stdin.
HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=10, source_address=(sys.argv[2], 0))
print("up", flush=True)
for line in sys.stdin:
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: vip\\r\\n\\r\\n")
    got = b""
    while b"\\r\\n\\r\\n" not in got:
        got += s.recv(65536)
    print(got.split(b"\\r\\n")[0].decode(), flush=True)
"""


def hold(lab: Lab, source: str, stack: ExitStack) -> subprocess.Popen[str]:
    """A connection from ``source`` to VIP:80 held open until ``stack`` closes."""
    proc = subprocess.Popen(
        lab.exec_argv(lab.client, [sys.executable, "-c", HOLD, lab.vip, source]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    stack.callback(proc.wait, 10)
    stack.callback(proc.stdin.close)  # type: ignore[union-attr]
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def ask(proc: subprocess.Popen[str]) -> str:
    """The status line of one more request over a held connection."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, oldest first (``pgrep -P``, read from
    /proc so that no procps is needed)."""
    found: list[tuple[int, int]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ... starttime (field 22); comm may hold spaces and ")"
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append((int(fields[19]), int(entry.name)))
    return [child for _, child in sorted(found)]


@dataclass(frozen=True)
class CurlResult:
    code: int
    body: str
    error: str
    seconds: float


def curl(lab: Lab, url: str, max_time: float = 5.0) -> CurlResult:
    start = time.monotonic()
    done = lab.run(
        lab.client,
        ["curl", "-sSg", "--max-time", str(max_time), url],  # -g: [IPv6] is no glob
        check=False,
        timeout=max_time + 10,
    )
    return CurlResult(done.returncode, done.stdout.strip(), done.stderr.strip(),
                      time.monotonic() - start)  # fmt: skip


def ab(lab: Lab, url: str, n: int, c: int, keepalive: bool = False) -> dict[str, str]:
    """Run ab from the client; return its 'Key: value' summary lines (and the status)."""
    argv = ["ab", "-q", "-n", str(n), "-c", str(c), "-s", "10", "-r"]
    if keepalive:
        argv.append("-k")
    done = lab.run(lab.client, [*argv, url], check=False, timeout=300)
    summary = {"exit": str(done.returncode), "stderr": done.stderr.strip()}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition(":")
        if key.strip() == "(Connect":
            # The servers' answers differ in length by design (each names itself), and
            # ab counts that as "Length" failures: keep the others.
            counts = dict(part.strip(" ()").split(": ") for part in line.split(","))
            summary["failures"] = str(sum(int(v) for k, v in counts.items() if k != "Length"))
        elif sep and value.strip():
            summary.setdefault(key.strip(), value.strip())
    summary.setdefault("failures", "0")
    return summary


def connections(d: Daemon) -> list[Any]:
    """The daemon's connection table, from `dirctl list -c --json`."""
    done = d.dirctl("list", "-c", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    if isinstance(data, dict):
        for key in ("connections", "conns", "entries"):
            if key in data:
                data = data[key]
                break
    assert isinstance(data, list), f"unexpected `list -c --json` shape: {done.stdout[:200]}"
    return data


def iptables_save(lab: Lab) -> str:
    return lab.run(lab.director, ["iptables-save"]).stdout


def ipset_names(lab: Lab) -> list[str]:
    return lab.run(lab.director, ["ipset", "list", "-n"], check=False).stdout.split()


def save(d: Daemon) -> str:
    done = d.dirctl("save", "-n")
    assert done.returncode == 0, done.stderr
    return done.stdout


def only_comments_removed(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*(#|$)", line))


# --- robustness and ICMP tests -----------------------------------------------------

HERE = Path(__file__).resolve().parent


def helper_argv(script: str, *args: str) -> list[str]:
    """Run one of this folder's stdlib helper programs (rawpkt.py, filesrv.py)."""
    return [sys.executable, str(HERE / script), *args]


class FileServer:
    """``filesrv.py`` in a namespace: GET serves ``directory``, POST answers a SHA-256."""

    def __init__(self, lab: Lab, ns: str, port: int, directory: Path, bind: str = "") -> None:
        self.lab, self.ns, self.port = lab, ns, port
        argv = helper_argv("filesrv.py", "--port", str(port), "--directory", str(directory))
        argv += ["--bind", bind] if bind else []
        self.proc = subprocess.Popen(
            lab.exec_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not lab.run(ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"filesrv on {ns}:{port} did not start")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$")


def scrape(lab: Lab, listen: str) -> dict[str, dict[str, float]]:
    """The metrics endpoint (in the director namespace), as {family: {labels: value}}."""
    text = lab.run(lab.director, ["curl", "-sS", "--max-time", "5",
                                  f"http://{listen}/metrics"]).stdout  # fmt: skip
    families: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            families.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
    return families


def by_reason(families: dict[str, dict[str, float]], family: str) -> dict[str, float]:
    """``{reason: value}`` of a family labelled ``reason`` (or ``kind``, ``verdict``)."""
    out: dict[str, float] = {}
    for labels, value in families.get(family, {}).items():
        out[labels.partition('="')[2].rstrip('"')] = value
    return out


def iptables_counters(lab: Lab, ns: str, table: str, chain: str, comment: str) -> tuple[int, int]:
    """The packets and bytes of the rule carrying ``--comment COMMENT`` in ``table``/``chain``."""
    out = lab.run(ns, ["iptables", "-w", "-t", table, "-L", chain, "-vnx"]).stdout
    for line in out.splitlines():
        if f"/* {comment} */" in line:
            packets, octets = line.split()[:2]
            return int(packets), int(octets)
    raise AssertionError(f"no rule {comment!r} in {ns} {table}/{chain}:\n{out}")


def iptables_packets(lab: Lab, ns: str, table: str, chain: str, comment: str) -> int:
    """The packet count of the rule carrying ``--comment COMMENT`` in ``table``/``chain``."""
    return iptables_counters(lab, ns, table, chain, comment)[0]


@contextmanager
def counting(lab: Lab, ns: str, table: str, chain: str, match: list[str],
             comment: str) -> Iterator[None]:  # fmt: skip
    """A counting rule (no target) for ``match`` first in ``table``/``chain`` in ``ns``
    while the block runs (before any rule of the director's that ends the chain for a
    packet): the kernel's own count to check the director's against."""
    rule = [chain, *match, "-m", "comment", "--comment", comment]
    lab.run(ns, ["iptables", "-w", "-t", table, "-I", *rule])
    try:
        yield
    finally:
        lab.run(ns, ["iptables", "-w", "-t", table, "-D", *rule], check=False)


def link_mac(lab: Lab, ns: str, ifname: str) -> str:
    info = json.loads(lab.run(ns, ["ip", "-j", "link", "show", ifname]).stdout)
    return str(info[0]["address"])


def route_mtu(lab: Lab, ns: str, dst: str) -> int | None:
    """The path MTU ``ip route get`` shows for ``dst`` in ``ns`` (a cached PMTU), if any."""
    out = lab.run(ns, ["ip", "route", "get", dst]).stdout
    m = re.search(r"\bmtu (?:lock )?(\d+)", out)
    return int(m.group(1)) if m else None
