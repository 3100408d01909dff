"""Small helpers for the netns tests: clients in the lab's client namespace."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from director.lab.daemon import Daemon
from director.lab.topology import Lab

SEED_RULES_FILE = Path(__file__).resolve().parents[2] / "rules" / "seed-nat.rules"
CURL_REFUSED = 7  # curl: "Failed to connect" (RST or ICMP unreachable)
CURL_TIMEOUT = 28


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
        ["curl", "-sS", "--max-time", str(max_time), url],
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
