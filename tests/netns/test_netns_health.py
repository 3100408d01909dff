"""Health checks through the real daemon, in namespaces: a real server whose service
dies is taken out within interval x fall + 1 s while a client keeps asking, and comes
back when it is started again; all real servers down brings the sorry server in; a DR
real server that lost the VIP on its lo is caught by the VIP-path probe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import curl

from director.lab import topology
from director.lab.daemon import Daemon

INTERVAL, FALL = 0.5, 2
CHECK = f"--interval {INTERVAL} --fall {FALL} --timeout 0.4"

# A client that asks the VIP over and over (a new connection each time) for at most
# argv[2] seconds and prints a line per request, as it goes: when it started and who
# answered (or the error).
CLIENT = """
import http.client, json, sys, time
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=1)
        conn.request("GET", "/")
        body = conn.getresponse().read().decode().split()[0]
        conn.close()
    except Exception as exc:
        body = "error: " + type(exc).__name__
    print(json.dumps((start, body)), flush=True)
    time.sleep(0.02)
"""


def read_until(
    client: subprocess.Popen[str], answers: list[tuple[float, str]], enough: Callable[[], bool]
) -> None:
    """Take the client's answers as they come until ``enough()`` (or it stopped)."""
    assert client.stdout is not None
    while not enough():
        line = client.stdout.readline()
        if not line:
            return
        start, body = json.loads(line)
        answers.append((start, body))


def checks(d: Daemon) -> dict[str, Any]:
    done = d.dirctl("list", "--checks", "--json")
    assert done.returncode == 0, done.stderr
    return {f"{r['server'][0]}:{r['server'][1]}": r for r in json.loads(done.stdout)}


def states(d: Daemon) -> dict[str, str]:
    return {server: row["state"] for server, row in checks(d).items()}


def wait_for(d: Daemon, server: str, state: str, within: float = 20.0) -> float:
    """Wait (up to ``within``, generous) until ``server``'s check is in ``state``, and
    return when it got there, in seconds from the call: by the daemon's own clock of the
    state (``for_seconds``, at most the time of its answer), not by how fast dirctl can
    be asked on a loaded machine."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        row = checks(d).get(server)
        answered = time.monotonic()
        if row is not None and row["state"] == state:
            return max(answered - row["for_seconds"] - start, 0.0)
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
    wait_for(daemon, "198.18.0.2:80", "up")
    wait_for(daemon, "198.18.0.3:80", "up")
    client = subprocess.Popen(
        lab.exec_argv(lab.client, [sys.executable, "-c", CLIENT, lab.vip, "60"]),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    answers: list[tuple[float, str]] = []
    try:
        # Both serve (however long the client takes to start), then rs1's service dies.
        read_until(client, answers, lambda: all(
            sum(b == rs for _, b in answers) > 3 for rs in ("rs1", "rs2")))  # fmt: skip
        killed_at = time.monotonic()
        old = lab.backends[0]
        old.terminate()
        old.wait(5)
        # The bound is the point: from interval x fall + 1 s on, rs2 alone answers.
        settled = killed_at + INTERVAL * FALL + 1.0
        read_until(client, answers, lambda: sum(t >= settled for t, _ in answers) > 10)
    finally:
        client.kill()
        client.communicate(timeout=30)
    before = [b for t, b in answers if t < killed_at]
    after = [b for t, b in answers if t >= settled]
    assert before.count("rs1") > 3 and before.count("rs2") > 3, answers  # both served
    assert len(after) > 10 and set(after) == {"rs2"}, after  # none failed, none to rs1
    row = dests(daemon)["198.18.0.2:80"]
    assert (row["state"], row["weight"]) == ("down", 0)  # quiesced, not removed
    listed = daemon.dirctl("list", "-n").stdout
    assert "198.18.0.2:80                Masq    0      " in listed and "[down]" in listed

    lab.backends[0] = backend(lab, 0)  # start it again: it takes traffic again
    wait_for(daemon, "198.18.0.2:80", "up")
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
        wait_for(daemon, "198.18.0.2:80", "down")
        wait_for(daemon, "198.18.0.3:80", "down")
        assert curl(lab, f"http://{lab.vip}/").body == "rs2 198.18.0.3:8000"
        listed = dests(daemon)
        assert set(listed) == {"198.18.0.3:8000"} and listed["198.18.0.3:8000"]["state"] == "sorry"
        assert "[sorry]" in daemon.dirctl("list", "-n").stdout
    finally:
        for rs in lab.real_servers:
            lab.run(rs.netns, ["iptables", "-D", *reject[2:]], check=False)
    wait_for(daemon, "198.18.0.2:80", "up")
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
        wait_for(d, "198.18.0.2:80", "up")
        wait_for(d, "198.18.0.3:80", "up")
        rs1 = dr_lab.real_servers[0]
        dr_lab.run(rs1.netns, ["ip", "addr", "del", f"{dr_lab.vip}/32", "dev", "lo"])
        try:
            took = wait_for(d, "198.18.0.2:80", "down")
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
        wait_for(d, "198.18.0.2:80", "up")
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
        wait_for(d, f"{rs1.addr}:80", "up")
        tun_lab.run(rs1.netns, ["ip", "addr", "del", f"{tun_lab.vip}/32", "dev", device])
        try:
            took = wait_for(d, f"{rs1.addr}:80", "down")
            assert took <= INTERVAL * FALL + 1.5
            others = [rs for rs in tun_lab.real_servers if rs is not rs1]
            assert all(states(d)[f"{rs.addr}:80"] == "up" for rs in others)
        finally:
            tun_lab.run(rs1.netns, ["ip", "addr", "add", f"{tun_lab.vip}/32", "dev", device],
                        check=False)  # fmt: skip
        wait_for(d, f"{rs1.addr}:80", "up")
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
    wait_for(daemon, "198.18.0.2:80", "up")
    wait_for(daemon, "198.18.0.3:80", "up")
    reject = ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "80", "-j", "REJECT",
              "--reject-with", "tcp-reset"]  # fmt: skip
    rs1 = lab.real_servers[0]
    lab.run(rs1.netns, reject)
    try:
        wait_for(daemon, "198.18.0.2:80", "down")
        deadline = time.monotonic() + 20
        while not down.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert down.exists(), "quorum_down did not run"
        up.unlink(missing_ok=True)  # whatever ran before: only the regain counts now
    finally:
        lab.run(rs1.netns, ["iptables", "-D", *reject[2:]], check=False)
    wait_for(daemon, "198.18.0.2:80", "up")
    deadline = time.monotonic() + 20
    while not up.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert up.exists(), "quorum_up did not run"
