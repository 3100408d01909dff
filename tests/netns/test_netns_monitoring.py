"""Issue 16, the dashboard and the alert rules against a real Prometheus (Debian's
``prometheus``, run in the foreground in the lab's director namespace with a config
and a data directory of the test's own) scraping the real daemon with the seed's lab
behind it: every query of director/monitoring/grafana-dashboard.json returns series,
the rules load and evaluate without error, and the alert for a service with no usable
real server goes pending for the one the test made so."""

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
from labtools import METRICS, SEED_RULES_FILE

from director.lab.daemon import Daemon
from director.lab.topology import Lab
from tests.monitoring.files import RULES, alert_names, dashboard_queries
from tests.skips import unavailable

PROMETHEUS = "127.0.0.1:9090"
# The seed's services, a check on port 80's real servers (director_backend_up), and a
# service whose only real server is quiesced: its connections are refused (no_dest).
EXTRA = (
    "# director-check -t 203.0.113.5:80 --type tcp --interval 0.5\n"
    "-A -t 203.0.113.5:8080 -s rr\n"
    "-a -t 203.0.113.5:8080 -r 198.18.0.2:80 -m -w 0\n"
)


@pytest.fixture(scope="module")
def monitored(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if shutil.which("prometheus") is None:
        unavailable("prometheus is not installed (make deps)")
    d = Daemon(lab, tmp_path_factory.mktemp("mon") / "director", ["--metrics-listen", METRICS])
    d.start()
    try:
        done = d.dirctl("restore", input=SEED_RULES_FILE.read_text() + EXTRA)
        assert done.returncode == 0, done.stderr
        yield d
    finally:
        code = d.stop()
        d.kill()
        assert code == 0, f"directord exited {code} on SIGTERM:\n{d.log()}"


def _api(lab: Lab, path: str) -> Any:
    url = f"http://{PROMETHEUS}/api/v1/{path}"
    done = lab.run(lab.director, ["curl", "-sS", "--max-time", "3", url], check=False)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout else None


def _query(lab: Lab, expr: str) -> list[Any] | None:
    answer = _api(lab, f"query?query={urllib.parse.quote(expr)}")
    if not answer or answer.get("status") != "success":
        return None
    result: list[Any] = answer["data"]["result"]
    return result


def test_every_dashboard_query_returns_series_and_the_rules_evaluate(
    monitored: Daemon, tmp_path: Path
) -> None:
    lab = monitored.lab
    # Traffic for the rates: connections through port 80, refusals on 8080 (no_dest).
    for port, ok in ((80, True), (8080, False)):
        done = lab.run(lab.client, ["curl", "-sS", "--max-time", "5",
                                    *[f"http://{lab.vip}:{port}/"] * 5], check=False)  # fmt: skip
        assert (done.returncode == 0) == ok, done.stderr
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n  - job_name: director\n"
        f"    static_configs:\n      - targets: ['{METRICS}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("wb")
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
        queries = dashboard_queries()
        empty = queries
        deadline = time.monotonic() + 60
        while empty and time.monotonic() < deadline:
            time.sleep(1)
            empty = [(title, q) for title, q in empty if not _query(lab, q)]
        assert not empty, f"queries without series: {empty}\n{log_path.read_text()[-1500:]}"
        print(f"{len(queries)} dashboard queries, each with series")

        # The rules: all loaded, none failing to evaluate, and the quiesced service's
        # alert pending (for: 1m) within a few evaluations.
        names = alert_names(RULES.read_text())
        deadline = time.monotonic() + 30
        while True:
            groups = (_api(lab, "rules") or {}).get("data", {}).get("groups", [])
            rules = {r["name"]: r for g in groups for r in g["rules"]}
            pending = _query(lab, 'ALERTS{alertname="DirectorServiceNoRealServer"}') or []
            # Never evaluated: Go's zero time, 0001-01-01.
            evaluated = rules and all(
                not r.get("lastEvaluation", "0001").startswith("0001") for r in rules.values()
            )
            if (evaluated and pending) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert sorted(rules) == sorted(names)
        assert {n: r["health"] for n, r in rules.items()} == dict.fromkeys(names, "ok"), rules
        assert [a["metric"].get("local_port") for a in pending] == ["8080"], pending
        assert pending[0]["metric"]["alertstate"] == "pending"
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()
