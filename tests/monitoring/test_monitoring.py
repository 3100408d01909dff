"""The Grafana dashboard and the Prometheus alert rules of director/monitoring/:
``promtool check rules``, ``promtool test rules`` with a case for every alert, and every
director_ name they use one the daemon exports.  tests/netns/test_netns_monitoring.py
evaluates the dashboard's queries and the rules in a real Prometheus scraping the real
daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import CounterMetricFamily

from director.shell.daemon import Daemon
from tests.monitoring.files import (
    DASHBOARD,
    RULE_TESTS,
    RULES,
    alert_exprs,
    alert_names,
    dashboard,
    dashboard_queries,
    director_names,
)
from tests.skips import unavailable
from tests.target import close, make_daemon, settings_in


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        unavailable("promtool is not installed (make deps: Debian's prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules() -> None:
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names(RULES.read_text()))} rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = _promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_case_and_a_quiet_one() -> None:
    """Each alert is named by an alert_rule_test that expects it, and by one that
    expects nothing (exp_alerts: [])."""
    tests = RULE_TESTS.read_text()
    cases = re.findall(r"alertname: (\S+)\n\s+exp_alerts:( \[\])?", tests)
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    names = alert_names(RULES.read_text())
    assert len(names) == len(set(names)) == 10
    assert set(names) <= firing, set(names) - firing
    assert set(names) <= quiet, set(names) - quiet


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    settings = settings_in(tmp_path)
    settings.metrics_listen = "127.0.0.1:9"  # never started: only its registry is read
    d = make_daemon(settings, "-A -t 203.0.113.5:80 -s rr\n")
    try:
        yield d
    finally:
        close(d)


def _exported(d: Daemon) -> set[str]:
    """The names of every family the daemon's listener serves (counters with _total)."""
    assert d.metrics is not None
    names = set()
    for collector in (d.metrics.collector, d.health.collector, d.sync.collector):
        for family in collector.collect():
            counter = isinstance(family, CounterMetricFamily)
            names.add(family.name + ("_total" if counter else ""))
    return names


def test_every_name_of_the_rules_and_the_dashboard_is_exported(daemon: Daemon) -> None:
    exported = _exported(daemon)
    used = director_names(RULES.read_text()) | director_names(DASHBOARD.read_text())
    assert used - exported == set()
    assert {"director_backend_up", "director_sync_daemon", "director_drops_total"} <= used


def test_the_dashboard_is_importable_as_it_is() -> None:
    """Grafana's import takes it without questions: a datasource variable (no
    __inputs to answer), unique panel ids, every target on that variable."""
    board = dashboard()
    assert "__inputs" not in board and board["uid"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    titles = " ".join(p["title"] for p in board["panels"])
    for wanted in ("Connections/s", "Packets/s", "Bytes/s", "Active / inactive", "Health",
                   "Drops", "Queue drops"):  # fmt: skip
        assert wanted in titles
    assert len(dashboard_queries()) >= 20
    assert len(alert_exprs(RULES.read_text())) == 10
