"""Issue 13: VRRP failover with the real keepalived, the sync daemon following it.

The HA lab (``dirctl lab up --kind ha``, director.lab.ha): two directors on one L2
segment each side, each running directord with the same rules and keepalived for
VRRP only, the VIP (outside) and the real servers' gateway (inside) two instances of
one ``vrrp_sync_group`` whose notify scripts are ``dirctl vrrp-notify``.  A director's
death is kill -9 of every process in its namespace (directord and keepalived at once):
the peer's keepalived notices the missing adverts (3 x advert_int 1 s plus the skew),
takes both addresses, its gratuitous ARPs turn the client and the real servers to it,
and notify_master makes its sync daemon the master.  The downloads are the real
servers' ``filesrv.py`` read slowly by curl (a small receive buffer in the client, so
that the transfer is slow on the wire too), checked by SHA-256.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import FileServer, random_file

from director.ctl import protocol
from director.lab import ha, topology
from director.lab.daemon import Daemon, venv_program
from director.lab.ha import PROGRAM
from tests.skips import unavailable

BLOB_SIZE = 10 << 20  # 10 MiB
RATE = "400K"  # curl --limit-rate: some 25 s, longer than a failover and a recovery
CLIENT_RMEM = "4096 65536 131072"
PORTS = {"dr": 8090, "nat": 8091}  # a download service of each method on both directors
FAILOVER_BOUND = 20.0  # seconds; VRRP's own is some 3.6 s (advert_int 1)


def _run(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    where = tmp_path_factory.mktemp("blob")
    return where, random_file(where / "blob", BLOB_SIZE)


@pytest.fixture(scope="module")
def hlab(blob: tuple[Path, str]) -> Iterator[ha.HaLab]:
    """The lab as a person brings it up (`dirctl lab up --kind ha`), a download
    service of each method added on both directors."""
    if ha.missing_program():
        unavailable("keepalived is not installed (.ci/install-deps test)")
    name = topology.new_prefix("dhat")
    dirctl = venv_program("dirctl")
    lab = ha.named(name, Path("/run/director-lab") / name)
    servers: list[FileServer] = []
    try:
        up = _run(dirctl, "lab", "up", "--kind", "ha", "--name", name)
        assert up.returncode == 0, up.stderr + up.stdout
        assert "dir1 (203.0.113.1, 198.18.0.101): master" in up.stdout, up.stdout
        assert "dir2 (203.0.113.2, 198.18.0.102): backup" in up.stdout, up.stdout
        topology.set_sysctl(lab.client, "net.ipv4.tcp_rmem", CLIENT_RMEM)
        for rs in lab.base.real_servers:
            for port in PORTS.values():
                servers.append(FileServer(lab.base, rs.netns, port, blob[0]))
        rules = ""
        for method, port in PORTS.items():
            flag = {"dr": "-g", "nat": "-m"}[method]
            rules += f"-A -t {lab.vip}:{port} -s rr\n"
            rules += "".join(f"-a -t {lab.vip}:{port} -r {rs.addr}:{port} {flag} -w 1\n"
                             for rs in lab.base.real_servers)  # fmt: skip
        for d in lab.directors:
            done = lab.daemon(d).dirctl("restore", input=rules)
            assert done.returncode == 0, done.stderr
        yield lab
    finally:
        for server in servers:
            server.close()
        _run(dirctl, "lab", "down", "--name", name)
        for daemon in lab.daemons.values():
            daemon.kill()


def conns(d: Daemon) -> list[dict[str, Any]]:
    """``list -c`` straight from the control socket; none if the daemon is dead."""
    try:
        result = protocol.request(str(d.socket_path), "list", {"conns": True}, 5.0)
    except (protocol.DaemonUnreachable, protocol.DaemonFailed):
        return []
    return list(result["conns"])


def wait_for(what: str, check: Any, timeout: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_the_backup_learns_the_masters_connections_within_3_s(hlab: ha.HaLab) -> None:
    """Through the VRRP master, DR (port 80) and NAT (port 8000) connections; the
    backup's table has every one (same client port, same real server) within 3 s.
    Each director runs one sync daemon, of its VRRP role (keepalived's notify)."""
    master = ha.master(hlab)
    backup = hlab.peer(master)
    assert ha.sync_roles(hlab, master) == {"master"}
    assert ha.sync_roles(hlab, backup) == {"backup"}
    for port in (ha.DR_PORT, ha.NAT_PORT) * 2:
        done = hlab.run(hlab.client, ["curl", "-sS", "-m", "3", f"http://{hlab.vip}:{port}/"])
        assert done.stdout.startswith("rs"), done.stdout + done.stderr
    client = topology.CLIENT_ADDR
    on_master = {(c["cport"], c["daddr"]) for c in conns(hlab.daemon(master))
                 if c["caddr"] == client}  # fmt: skip
    assert len(on_master) == 4

    def learned() -> bool:
        return on_master <= {(c["cport"], c["daddr"]) for c in conns(hlab.daemon(backup))}

    took = wait_for("the backup learns the master's connections", learned, 3.0)
    print(f"backup learned 4 connections in {took:.2f} s")


@pytest.mark.parametrize("method", ["dr", "nat"])
def test_a_slow_download_survives_the_masters_death_and_the_dead_one_learns_it_back(
    hlab: ha.HaLab, blob: tuple[Path, str], tmp_path: Path, method: str
) -> None:
    """A slow 10 MiB download through the master; the backup learns its connection;
    the master dies (kill -9 of its directord and keepalived); the backup's keepalived
    takes the VIP and the gateway, its daemon becomes the sync master, and the
    download goes on from the synced entry (without it, the backup has no connection
    for the client's ACKs: DR would reset it, NAT could not rewrite the server's
    answers).  The dead director is started again: keepalived makes it BACKUP (its
    peer keeps the addresses, nopreempt) and its table learns the download's
    connection back from the new master while it runs.  The file arrives byte for byte."""
    port = PORTS[method]
    master = ha.master(hlab)
    other = hlab.peer(master)
    out = tmp_path / "got"
    argv = ["curl", "-sS", "--limit-rate", RATE, "--max-time", "120", "-o", str(out),
            f"http://{hlab.vip}:{port}/blob"]  # fmt: skip
    download = subprocess.Popen(hlab.base.exec_argv(hlab.client, argv), stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    try:
        mine: list[dict[str, Any]] = []

        def started() -> bool:
            mine[:] = [c for c in conns(hlab.daemon(master)) if c["vport"] == port]
            return bool(mine)

        wait_for("the master has the download's connection", started, 10.0)
        ((cport, rs),) = {(c["cport"], c["daddr"]) for c in mine}

        def has_it(d: ha.DirectorHost) -> bool:
            return any(c["cport"] == cport and c["daddr"] == rs for c in conns(hlab.daemon(d)))

        wait_for("the backup learns the download", lambda: has_it(other), 3.0)
        time.sleep(1.0)  # some of the file on its way first
        killed_at = time.monotonic()
        ha.crash(hlab, master)
        ha.wait_role(hlab, other, "master", FAILOVER_BOUND)
        failover = time.monotonic() - killed_at
        print(f"{method}: {other.name} master {failover:.2f} s after the kill")
        assert download.poll() is None, "the download ended before the failover"

        ha.recover(hlab, master)
        ha.wait_role(hlab, master, "backup", 30.0)
        assert ha.role(hlab, other) == "master"
        took = wait_for("the recovered director learns the download back",
                        lambda: has_it(master), 15.0)  # fmt: skip
        print(f"{method}: {master.name} learnt the download back {took:.2f} s after it was backup")
        assert download.poll() is None, "the download ended before the recovery was checked"
        listed = hlab.daemon(master).dirctl("list", "-n", "-c").stdout
        assert f"{topology.CLIENT_ADDR}:{cport}" in listed, listed

        assert download.wait(timeout=120) == 0, download.stderr.read() if download.stderr else ""
    finally:
        if download.poll() is None:
            download.kill()
            download.wait()
        if download.stderr:
            download.stderr.close()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == blob[1]


def test_import_keepalived_takes_lvs_timeouts_and_leaves_the_vrrp_roles(
    hlab: ha.HaLab, tmp_path: Path
) -> None:
    """`dirctl import-keepalived` of a keepalived.conf with global_defs' lvs_timeouts
    and lvs_sync_daemon on both directors: the timeouts reach the table (ipvsadm
    --set, shown by list --timeout); the sync daemon it asks for (backup, syncid the
    instance's: the lab's own settings) runs already on the backup, and on the master
    the master daemon vrrp-notify started stays (no second daemon, no error)."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(
        f"global_defs {{\n  lvs_timeouts tcp 1800 tcpfin 60\n"
        f"  lvs_sync_daemon {ha.SYNC_IF} VI_IN id {ha.SYNCID}\n}}\n"
        f"vrrp_instance VI_IN {{\n  interface {ha.INSIDE_IF}\n  virtual_router_id 52\n}}\n"
        f"virtual_server {hlab.vip} 8092 {{\n  lb_algo rr\n  lb_kind DR\n"
        f"  real_server 198.18.0.2 8092 {{\n  }}\n}}\n"
    )
    for d in hlab.directors:
        before = ha.sync_roles(hlab, d)
        done = hlab.daemon(d).dirctl("import-keepalived", str(conf))
        assert done.returncode == 0, done.stderr
        assert ha.sync_roles(hlab, d) == before
        shown = hlab.daemon(d).dirctl("list", "--timeout").stdout
        assert "1800 60 " in shown, shown
    assert {ha.role(hlab, d) for d in hlab.directors} == {"master", "backup"}


def test_lab_down_ends_keepalived_and_removes_the_namespaces(hlab: ha.HaLab) -> None:
    """`dirctl lab down` after `lab up --kind ha`: no process of the lab is left (the
    keepalived instances with the rest) and no namespace; the packaged keepalived
    service was never started."""
    pids = _run("ip", "netns", "pids", hlab.directors[0].netns).stdout.split()
    keepalived = [int(p) for p in pids if Path(f"/proc/{p}/comm").read_text().strip() == PROGRAM]
    assert keepalived, "no keepalived in dir1 before lab down"
    again = _run(venv_program("dirctl"), "lab", "up", "--kind", "ha", "--name", hlab.base.prefix)
    assert again.returncode == 1 and "lab down" in again.stderr, again.stderr
    down = _run(venv_program("dirctl"), "lab", "down", "--name", hlab.base.prefix)
    assert down.returncode == 0, down.stderr
    assert not [n for n in _run("ip", "netns", "list").stdout.split()
                if n.startswith(f"{hlab.base.prefix}-")]  # fmt: skip
    for pid in keepalived:
        assert not Path(f"/proc/{pid}").exists() or "keepalived" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_bytes().decode(errors="replace")
    assert not Path("/run/keepalived.pid").exists()
