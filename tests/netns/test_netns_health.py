"""Health checks through the real daemon, in namespaces: a real server whose service
dies is taken out within interval x fall + 1 s while a client keeps asking, and comes
back when it is started again; all real servers down brings the sorry server in; a DR
real server that lost the VIP on its lo is caught by the VIP-path probe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import curl

from director.lab import topology
from director.lab.daemon import Daemon

INTERVAL, FALL = 0.5, 2
CHECK = f"--interval {INTERVAL} --fall {FALL} --timeout 0.4"

# A client that asks the VIP over and over (a new connection each time) for a bounded
# time and prints, per request, when it started and who answered (or the error).
CLIENT = """
import http.client, json, sys, time
end = time.monotonic() + float(sys.argv[2])
out = []
while time.monotonic() < end:
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=1)
        conn.request("GET", "/")
        body = conn.getresponse().read().decode().split()[0]
        conn.close()
    except Exception as exc:
        body = "error: " + type(exc).__name__
    out.append((start, body))
    time.sleep(0.02)
print(json.dumps(out))
"""


def states(d: Daemon) -> dict[str, str]:
    done = d.dirctl("list", "--checks", "--json")
    assert done.returncode == 0, done.stderr
    return {f"{r['server'][0]}:{r['server'][1]}": r["state"] for r in json.loads(done.stdout)}


def wait_for(d: Daemon, server: str, state: str, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if states(d).get(server) == state:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{server} not {state} after {within}s: {states(d)}\n{d.log()[-2000:]}")


def backend(lab: topology.Lab, index: int) -> subprocess.Popen[bytes]:
    rs = lab.real_servers[index]
    argv = [sys.executable, "-m", "director.lab.backend", "--name", rs.name]
    for port in topology.BACKEND_PORTS:
        argv += ["--port", str(port)]
    return subprocess.Popen(lab.exec_argv(rs.netns, argv), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def restore(d: Daemon, text: str) -> None:
    done = d.dirctl("restore", input=text)
    assert done.returncode == 0, done.stderr


def dests(d: Daemon) -> dict[str, Any]:
    done = d.dirctl("list", "--json")
    assert done.returncode == 0, done.stderr
    (svc,) = json.loads(done.stdout)["services"]
    return {f"{x['addr']}:{x['port']}": x for x in svc["dests"]}


def test_dead_server_out_in_time_and_back(lab: topology.Lab, daemon: Daemon) -> None:
    restore(daemon, lab.rules() + f"# director-check -t {lab.vip}:80 --type http {CHECK}\n")
    wait_for(daemon, "198.18.0.2:80", "up", 5)
    wait_for(daemon, "198.18.0.3:80", "up", 5)
    client = subprocess.Popen(
        lab.exec_argv(lab.client, [sys.executable, "-c", CLIENT, lab.vip, "4"]),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    killed_at = time.monotonic()
    old = lab.backends[0]
    old.terminate()
    old.wait(5)
    out, _ = client.communicate(timeout=30)
    answers = json.loads(out)
    settled = killed_at + INTERVAL * FALL + 1.0
    before = [b for t, b in answers if t < killed_at]
    after = [b for t, b in answers if t >= settled]
    assert before.count("rs1") > 3 and before.count("rs2") > 3  # both served
    assert len(after) > 10 and set(after) == {"rs2"}, after  # none failed, none to rs1
    row = dests(daemon)["198.18.0.2:80"]
    assert (row["state"], row["weight"]) == ("down", 0)  # quiesced, not removed
    listed = daemon.dirctl("list", "-n").stdout
    assert "198.18.0.2:80                Masq    0      " in listed and "[down]" in listed

    lab.backends[0] = backend(lab, 0)  # start it again: it takes traffic again
    wait_for(daemon, "198.18.0.2:80", "up", INTERVAL + 3)
    assert dests(daemon)["198.18.0.2:80"]["weight"] == 1
    bodies = {curl(lab, f"http://{lab.vip}/").body.split()[0] for _ in range(6)}
    assert bodies == {"rs1", "rs2"}
    metrics = daemon.dirctl("list", "--checks").stdout
    assert "198.18.0.2:80" in metrics and "up" in metrics


def test_all_down_sorry_server_answers(lab: topology.Lab, daemon: Daemon) -> None:
    restore(
        daemon,
        lab.rules()
        + f"# director-check -t {lab.vip}:80 --type tcp {CHECK} --on-failure remove\n"
        + f"# director-health -t {lab.vip}:80 --sorry-server 198.18.0.3:8000 -m\n",
    )
    reject = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "80", "-j", "REJECT",
              "--reject-with", "tcp-reset"]  # fmt: skip
    for rs in lab.real_servers:
        lab.run(rs.netns, reject)
    try:
        wait_for(daemon, "198.18.0.2:80", "down", INTERVAL * FALL + 3)
        wait_for(daemon, "198.18.0.3:80", "down", INTERVAL * FALL + 3)
        assert curl(lab, f"http://{lab.vip}/").body == "rs2 198.18.0.3:8000"
        listed = dests(daemon)
        assert set(listed) == {"198.18.0.3:8000"} and listed["198.18.0.3:8000"]["state"] == "sorry"
        assert "[sorry]" in daemon.dirctl("list", "-n").stdout
    finally:
        for rs in lab.real_servers:
            lab.run(rs.netns, ["iptables", "-D", *reject[2:]], check=False)
    wait_for(daemon, "198.18.0.2:80", "up", INTERVAL + 3)
    assert curl(lab, f"http://{lab.vip}/").body.startswith(("rs1 ", "rs2 198.18.0.3:80"))
    assert "198.18.0.3:8000" not in dests(daemon)  # the sorry server left again
    saved = daemon.dirctl("save", "-n").stdout
    assert "#" not in saved and "8000" not in saved  # health never reaches the rules
    assert "# director-health" in Path(daemon.rules_path).read_text()


@pytest.fixture(scope="module")
def dr_lab() -> Iterator[topology.Lab]:
    built = topology.build(kind="dr")
    try:
        topology.start_backends(built, ports=(80,))
        yield built
    finally:
        topology.teardown(built)


def test_dr_server_without_vip_caught_by_vip_probe(dr_lab: topology.Lab, tmp_path: Path) -> None:
    d = Daemon(dr_lab, tmp_path / "director")
    d.start()
    try:
        restore(d, dr_lab.rules() + f"# director-check -t {dr_lab.vip}:80 --via-vip {CHECK}\n")
        wait_for(d, "198.18.0.2:80", "up", 5)
        wait_for(d, "198.18.0.3:80", "up", 5)
        rs1 = dr_lab.real_servers[0]
        dr_lab.run(rs1.netns, ["ip", "addr", "del", f"{dr_lab.vip}/32", "dev", "lo"])
        try:
            took = wait_for(d, "198.18.0.2:80", "down", INTERVAL * FALL + 3)
            assert took <= INTERVAL * FALL + 1.5
            assert (
                states(d)["198.18.0.3:80"] == "up"
            )  # RIP:80 still answers: only the probe sees it
            rows = json.loads(d.dirctl("list", "--checks", "--json").stdout)
            error = {r["server"][0]: r["last_error"] for r in rows}["198.18.0.2"]
            assert "no answer" in error and rows[0]["via_vip"]
            assert {curl(dr_lab, f"http://{dr_lab.vip}/").body.split()[0] for _ in range(4)} == {
                "rs2"
            }
        finally:
            dr_lab.run(rs1.netns, ["ip", "addr", "add", f"{dr_lab.vip}/32", "dev", "lo"],
                       check=False)  # fmt: skip
        wait_for(d, "198.18.0.2:80", "up", INTERVAL + 3)
    finally:
        code = d.stop()
        d.kill()
        assert code == 0, d.log()


@pytest.fixture(scope="module")
def tun_lab() -> Iterator[topology.Lab]:
    built = topology.build(kind="tun")
    try:
        topology.start_backends(built, ports=(80,))
        yield built
    finally:
        topology.teardown(built)


def test_tun_server_without_vip_caught_by_vip_probe(tun_lab: topology.Lab, tmp_path: Path) -> None:
    """The same through the tunnel: the probe's SYN to the VIP goes inside IPIP to the
    real server two routed hops away; once its decapsulating device no longer carries
    the VIP, nothing answers and the server is taken out; given back, it returns."""
    d = Daemon(tun_lab, tmp_path / "director")
    d.start()
    rs1 = tun_lab.real_servers[0]
    device = "dirtun0"
    try:
        restore(d, tun_lab.rules() + f"# director-check -t {tun_lab.vip}:80 --via-vip {CHECK}\n")
        wait_for(d, f"{rs1.addr}:80", "up", 5)
        tun_lab.run(rs1.netns, ["ip", "addr", "del", f"{tun_lab.vip}/32", "dev", device])
        try:
            took = wait_for(d, f"{rs1.addr}:80", "down", INTERVAL * FALL + 3)
            assert took <= INTERVAL * FALL + 1.5
            others = [rs for rs in tun_lab.real_servers if rs is not rs1]
            assert all(states(d)[f"{rs.addr}:80"] == "up" for rs in others)
        finally:
            tun_lab.run(rs1.netns, ["ip", "addr", "add", f"{tun_lab.vip}/32", "dev", device],
                        check=False)  # fmt: skip
        wait_for(d, f"{rs1.addr}:80", "up", INTERVAL + 3)
    finally:
        code = d.stop()
        d.kill()
        assert code == 0, d.log()


def test_quorum_lost_and_regained_runs_its_commands(
    lab: topology.Lab, daemon: Daemon, tmp_path: Path
) -> None:
    """keepalived's quorum: the healthy servers' weights fall below it -> quorum_down
    runs; they come back -> quorum_up runs."""
    down, up = tmp_path / "quorum-down", tmp_path / "quorum-up"
    restore(
        daemon,
        lab.rules()
        + f"# director-check -t {lab.vip}:80 --type tcp {CHECK}\n"
        + f"# director-health -t {lab.vip}:80 --quorum 2 --quorum-down 'touch {down}'"
        + f" --quorum-up 'touch {up}'\n",
    )
    wait_for(daemon, "198.18.0.2:80", "up", 5)
    wait_for(daemon, "198.18.0.3:80", "up", 5)
    reject = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "80", "-j", "REJECT",
              "--reject-with", "tcp-reset"]  # fmt: skip
    rs1 = lab.real_servers[0]
    lab.run(rs1.netns, reject)
    try:
        wait_for(daemon, "198.18.0.2:80", "down", INTERVAL * FALL + 3)
        deadline = time.monotonic() + 5
        while not down.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert down.exists(), "quorum_down did not run"
        up.unlink(missing_ok=True)  # whatever ran before: only the regain counts now
    finally:
        lab.run(rs1.netns, ["iptables", "-D", *reject[2:]], check=False)
    wait_for(daemon, "198.18.0.2:80", "up", INTERVAL + 3)
    deadline = time.monotonic() + 5
    while not up.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert up.exists(), "quorum_up did not run"
