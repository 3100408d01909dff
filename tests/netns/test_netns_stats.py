"""Issue 5 end to end: counters, rates, zero and the Prometheus endpoint of the real daemon.

The client's own iptables counters are the independent count: every packet the client
sends to VIP:80 reaches the director's LOCAL_IN hook (in), every packet it receives
from VIP:80 left the director's FORWARD hook (out), and both count whole IP packets,
as IPVS does.  A real Prometheus server (Debian's ``prometheus``) scrapes the
daemon's endpoint from inside the director namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import METRICS, SEED_RULES_FILE, curl

from director.lab.daemon import Daemon
from director.lab.topology import Lab
from tests.skips import unavailable

PROMETHEUS = "127.0.0.1:9090"
N = 100
IN_RULE = ["OUTPUT", "-d", "203.0.113.5/32", "-p", "tcp", "--dport", "80"]
OUT_RULE = ["INPUT", "-s", "203.0.113.5/32", "-p", "tcp", "--sport", "80"]


@pytest.fixture(scope="module")
def stats_daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(lab, tmp_path_factory.mktemp("stats") / "director", ["--metrics-listen", METRICS])
    d.start()
    try:
        done = d.dirctl("restore", str(SEED_RULES_FILE))
        assert done.returncode == 0, done.stderr
        yield d
    finally:
        code = d.stop()
        d.kill()
        assert code == 0, f"directord exited {code} on SIGTERM:\n{d.log()}"


@pytest.fixture
def client_counters(lab: Lab) -> Iterator[dict[str, list[str]]]:
    """Counting rules (no target) in the client's namespace, removed afterwards."""
    rules = {"in": IN_RULE, "out": OUT_RULE}
    for name, rule in rules.items():
        lab.run(lab.client, ["iptables", "-w", "-I", *rule, "-m", "comment",
                             "--comment", f"dstats-{name}"])  # fmt: skip
    try:
        yield rules
    finally:
        for name, rule in rules.items():
            lab.run(lab.client, ["iptables", "-w", "-D", *rule, "-m", "comment",
                                 "--comment", f"dstats-{name}"], check=False)  # fmt: skip


def _client_count(lab: Lab, name: str) -> tuple[int, int]:
    """(packets, bytes) of a counting rule, from ``iptables-save -c``."""
    for line in lab.run(lab.client, ["iptables-save", "-c", "-t", "filter"]).stdout.splitlines():
        if f"dstats-{name}" in line:
            packets, _, nbytes = line[1 : line.index("]")].partition(":")
            return int(packets), int(nbytes)
    raise AssertionError(f"counting rule dstats-{name} not found")


def _list_json(d: Daemon, *args: str) -> Any:
    done = d.dirctl("list", "-n", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _web(d: Daemon) -> Any:
    return _list_json(d, "-t", "203.0.113.5:80")


def _metrics(lab: Lab) -> str:
    done = lab.run(lab.director, ["curl", "-sS", "--max-time", "5", f"http://{METRICS}/metrics"])
    return done.stdout


def test_stats_count_every_connection_and_packet(
    stats_daemon: Daemon, client_counters: dict[str, list[str]]
) -> None:
    d, lab = stats_daemon, stats_daemon.lab
    assert d.dirctl("zero").returncode == 0
    before_in, before_out = _client_count(lab, "in"), _client_count(lab, "out")
    # One curl, N URLs, "Connection: close": exactly N connections, one request each.
    done = lab.run(lab.client, ["curl", "-sS", "--max-time", "30", "-H", "Connection: close",
                                *[f"http://{lab.vip}/"] * N], timeout=60)  # fmt: skip
    assert done.stdout.count("\n") == N, done.stderr

    def counted() -> tuple[tuple[int, ...], tuple[int, ...], Any]:
        sent = tuple(a - b for a, b in zip(_client_count(lab, "in"), before_in, strict=True))
        got = tuple(a - b for a, b in zip(_client_count(lab, "out"), before_out, strict=True))
        return sent, got, _web(d)

    # The last ACKs and FINs of the last connections may still be on their way: read
    # both sides until they agree (or 15 s have passed), then compare.
    deadline = time.monotonic() + 15
    sent, got, web = counted()
    while time.monotonic() < deadline and (
        (web["stats"]["inpkts"], web["stats"]["inbytes"]) != sent
        or (web["stats"]["outpkts"], web["stats"]["outbytes"]) != got
    ):
        time.sleep(0.2)
        sent, got, web = counted()
    stats = web["stats"]
    assert stats["conns"] == N
    by_dest = {f"{x['addr']}:{x['port']}": x["stats"] for x in web["dests"]}
    # rr over two real servers: exactly half each.
    assert {k: v["conns"] for k, v in by_dest.items()} == {
        "198.18.0.2:80": N // 2,
        "198.18.0.3:8000": N // 2,
    }
    assert (stats["inpkts"], stats["inbytes"]) == sent
    assert (stats["outpkts"], stats["outbytes"]) == got
    for key in ("conns", "inpkts", "outpkts", "inbytes", "outbytes"):
        assert sum(s[key] for s in by_dest.values()) == stats[key], key
    text = d.dirctl("list", "-n", "--stats", "--exact").stdout
    row = next(line for line in text.splitlines() if line.startswith("TCP  203.0.113.5:80"))
    assert row.split()[2:] == [str(stats[k]) for k in
                               ("conns", "inpkts", "outpkts", "inbytes", "outbytes")]  # fmt: skip

    # zero: listings start again from 0; Prometheus keeps the raw counters.
    assert d.dirctl("zero", "-t", "203.0.113.5:80").returncode == 0
    zeroed = _web(d)
    assert zeroed["stats"]["conns"] == 0 and zeroed["stats"]["cps"] == 0
    assert all(x["stats"]["inpkts"] == 0 for x in zeroed["dests"])
    series = (
        'director_connections_total{local_address="203.0.113.5",'
        'local_mark="",local_port="80",proto="TCP"}'
    )
    line = next(ln for ln in _metrics(lab).splitlines() if ln.startswith(series))
    assert float(line.split()[-1]) >= N


def test_rates_rise_under_load_and_fall_after(stats_daemon: Daemon) -> None:
    d, lab = stats_daemon, stats_daemon.lab
    load = subprocess.Popen(
        lab.exec_argv(lab.client, ["ab", "-q", "-n", "3000", "-c", "2", "-t", "4", "-s", "5",
                                   f"http://{lab.vip}/"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    readings: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (readings and readings[-1] > 0):
            time.sleep(0.5)
            readings.append(_web(d)["stats"]["cps"])
        assert readings[-1] > 0, f"no rate within 20 s of load: {readings}"
        rate = _list_json(d, "--rate")
        assert rate["totals"]["inpps"] > 0 and rate["totals"]["inbps"] > 0
        assert "CPS    InPPS   OutPPS    InBPS   OutBPS" in d.dirctl("list", "--rate").stdout
    finally:
        load.wait(timeout=30)
    # The load has stopped: the next steps of the average bring it down.
    loaded = _web(d)["stats"]["cps"]
    after = [loaded]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and after[-1] >= loaded:
        time.sleep(0.5)
        after.append(_web(d)["stats"]["cps"])
    assert after[-1] < loaded, f"rate did not fall after the load: {readings} then {after}"


def test_dirctl_top_once(stats_daemon: Daemon) -> None:
    done = stats_daemon.dirctl("top", "--once")
    assert done.returncode == 0, done.stderr
    assert "TCP  203.0.113.5:80" in done.stdout
    assert "  -> 198.18.0.2:80" in done.stdout


def _prometheus_query(lab: Lab, query: str) -> Any:
    url = f"http://{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(query)}"
    done = lab.run(lab.director, ["curl", "-sS", "--max-time", "3", url], check=False)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout else None


def test_a_real_prometheus_scrapes_the_endpoint(stats_daemon: Daemon, tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        unavailable("prometheus is not installed (make deps)")
    lab = stats_daemon.lab
    for _ in range(3):
        assert curl(lab, f"http://{lab.vip}/").code == 0
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: director\n"
        f"    static_configs:\n      - targets: ['{METRICS}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        lab.exec_argv(lab.director, [
            "prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={PROMETHEUS}",
        ]),
        stdout=log,
        stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        found: list[Any] = []
        while time.monotonic() < deadline and not found:
            time.sleep(0.5)
            answer = _prometheus_query(lab, 'director_connections_total{local_port="80"}')
            if answer and answer.get("status") == "success":
                found = answer["data"]["result"]
        assert found, (tmp_path / "prometheus.log").read_text()[-2000:]
        labels = found[0]["metric"]
        # Prometheus drops empty labels: local_mark="" does not come back.
        assert labels == {
            "__name__": "director_connections_total",
            "instance": METRICS,
            "job": "director",
            "proto": "TCP",
            "local_address": "203.0.113.5",
            "local_port": "80",
        }
        assert float(found[0]["value"][1]) >= 3
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()
