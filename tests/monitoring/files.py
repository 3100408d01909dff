"""The monitoring files of the repository (director/monitoring/) and what the tests
read out of them: the alert names, the dashboard's queries, the director_ names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MONITORING = Path(__file__).resolve().parents[2] / "director" / "monitoring"
RULES = MONITORING / "alerts.rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_TESTS = Path(__file__).resolve().parent / "alerts.test.yml"

# What Grafana puts in for its variables when a dashboard is shown: every director
# ($instance's "All" is .+), a rate window of a few scrapes, the dashboard's range.
GRAFANA_VARIABLES = {"$instance": ".+", "$__rate_interval": "15s", "$__range": "5m"}
NAME = re.compile(r"\bdirector_[a-z0-9_]*[a-z0-9]")


def alert_names(text: str) -> list[str]:
    """The ``- alert: NAME`` of a rules file, in order."""
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", text, flags=re.MULTILINE)


def alert_exprs(text: str) -> list[str]:
    """The ``expr:`` of each rule: one line, or the indented block after ``expr: |``."""
    exprs: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        head = line.strip()
        if not head.startswith("expr:"):
            continue
        value = head[len("expr:") :].strip()
        if value != "|":
            exprs.append(value)
            continue
        indent = len(line) - len(line.lstrip()) + 2
        block = []
        for more in lines[i + 1 :]:
            if more.strip() and len(more) - len(more.lstrip()) < indent:
                break
            block.append(more.strip())
        exprs.append(" ".join(b for b in block if b))
    return exprs


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, Grafana's variables put in."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            queries.append((panel["title"], expr))
    return queries


def director_names(text: str) -> set[str]:
    return set(NAME.findall(text))
