"""Issue 16, the status page in a real headless browser: Debian's Chromium, driven over
WebDriver by chromedriver inside the lab's director namespace (tests/netns/webdriver.py),
loads ``/`` of the real daemon's --metrics-listen with the seed's lab behind it.  What
it shows is checked against ``dirctl list --json`` (and ``list --checks``), it is seen
to reload itself and show the traffic sent meanwhile, a check's Host header, command and
error text reach it as text (no element of theirs in the document), the sync daemon
that runs is shown, and a screenshot is kept (its path is printed)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import METRICS, SEED_RULES_FILE, helper_argv

from director.lab.daemon import Daemon
from director.lab.topology import Lab
from tests.skips import unavailable

HOSTILE = "<script>alert(1)</script>&\"'<img src=x onerror=alert(2)>"
MISSING = "/nonexistent/" + HOSTILE  # the misc check's program: its error names it
CHECKS = (
    f"# director-check -t 203.0.113.5:80 -r 198.18.0.2:80 --type http "
    f"--host {shlex.quote(HOSTILE)} --interval 0.5\n"
    f"# director-check -t 203.0.113.5:80 -r 198.18.0.3:8000 --type misc "
    f"--command {shlex.quote(shlex.join([MISSING]))} --interval 0.5\n"
)
# ipvsadm's Forward column (ipvsadm.c fwd_name), for list --json's method.
FORWARD = {"masq": "Masq", "droute": "Route", "tunnel": "Tunnel", "local": "Local"}
N = 20

# Every real server row of the page as {cell key: text}, the service rows likewise,
# what the document holds that markup from a check would have made, and when the
# page was loaded (it changes when the page reloads itself).
ROWS = """
const rows = sel => [...document.querySelectorAll(sel)].map(tr => {
  const row = {service: tr.dataset.service, dest: tr.dataset.dest || null};
  for (const td of tr.querySelectorAll('td[data-key]')) row[td.dataset.key] = td.textContent;
  return row;
});
return {dests: rows('tr.dest'), services: rows('tr.service'),
        sync: [...document.querySelectorAll('#sync tr[data-sync]')].map(
          tr => [...tr.cells].map(td => td.textContent)),
        injected: document.querySelectorAll('script, img, [onerror]').length,
        loaded: performance.timeOrigin};
"""


class Browser:
    """The webdriver helper in a namespace: one command, one answer."""

    def __init__(self, lab: Lab, profile: Path) -> None:
        self.proc = subprocess.Popen(
            lab.exec_argv(lab.director, helper_argv("webdriver.py", str(profile))),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its group: the driver and the browser
        )
        assert self.ask_line() == "ready"

    def ask_line(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the webdriver helper ended"
        return json.loads(line)

    def ask(self, **command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.ask_line()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def status_daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(lab, tmp_path_factory.mktemp("status") / "director", ["--metrics-listen", METRICS])
    d.start()
    try:
        done = d.dirctl("restore", input=SEED_RULES_FILE.read_text() + CHECKS)
        assert done.returncode == 0, done.stderr
        yield d
    finally:
        code = d.stop()
        d.kill()
        assert code == 0, f"directord exited {code} on SIGTERM:\n{d.log()}"


@pytest.fixture(scope="module")
def browser(status_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            unavailable(f"{program} is not installed (make deps)")
    b = Browser(status_daemon.lab, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def _dirctl_json(d: Daemon, *args: str) -> Any:
    done = d.dirctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _expected(d: Daemon) -> tuple[dict[tuple[str, str], dict[str, str]], dict[str, dict[str, str]]]:
    """What the page must show, from list --json and list --checks --json, as text."""
    listed = _dirctl_json(d, "list", "-n")
    errors = {
        f"{r['server'][0]}:{r['server'][1]}": r["last_error"]
        for r in _dirctl_json(d, "list", "--checks")
    }
    dests: dict[tuple[str, str], dict[str, str]] = {}
    services: dict[str, dict[str, str]] = {}
    for svc in listed["services"]:
        name = f"{svc['protocol']}  {svc['addr']}:{svc['port']}"
        services[name] = {k: str(svc["stats"][k]) for k in ("conns", "inpkts", "outpkts")}
        for dest in svc["dests"]:
            where = f"{dest['addr']}:{dest['port']}"
            dests[(name, where)] = {
                "method": FORWARD[dest["method"]],
                "weight": str(dest["weight"]),
                "state": dest.get("state", "-"),
                "activeconns": str(dest["activeconns"]),
                "inactconns": str(dest["inactconns"]),
                "conns": str(dest["stats"]["conns"]),
                "inpkts": str(dest["stats"]["inpkts"]),
                "last_error": errors.get(where, "") if "state" in dest else "",
            }
    return dests, services


def _shown(page: Any) -> tuple[dict[tuple[str, str], dict[str, str]], dict[str, dict[str, str]]]:
    dests = {
        (r["service"], r["dest"]): {k: r[k] for k in ("method", "weight", "state", "activeconns",
                                                    "inactconns", "conns", "inpkts", "last_error")}
        for r in page["dests"]
    }  # fmt: skip
    services = {
        r["service"]: {k: r[k] for k in ("conns", "inpkts", "outpkts")} for r in page["services"]
    }
    return dests, services


def _agree(d: Daemon, b: Browser, within: float = 15.0) -> Any:
    """Read the page (without loading it again) until it shows what dirctl lists: the
    sample is at most a tick older than the listing."""
    deadline = time.monotonic() + within
    while True:
        page = b.ask(eval=ROWS)
        expected = _expected(d)
        if _shown(page) == expected:
            return page
        if time.monotonic() > deadline:
            assert _shown(page) == expected
        time.sleep(0.3)


def _wait_down(d: Daemon, server: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = _dirctl_json(d, "list", "--checks")
        if any(
            f"{r['server'][0]}:{r['server'][1]}" == server and r["state"] == "down" for r in rows
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"{server} not down: {rows}")


def test_the_page_shows_what_dirctl_lists_and_refreshes_after_traffic(
    status_daemon: Daemon, browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    d, lab = status_daemon, status_daemon.lab
    _wait_down(d, "198.18.0.3:8000")  # its check's program does not exist
    done = d.dirctl("start-daemon", "master", "--mcast-interface", "br0", "--syncid", "7")
    assert done.returncode == 0, done.stderr
    assert browser.ask(open=f"http://{METRICS}/") is None
    first = _agree(d, browser)
    assert set(_shown(first)[1]) == {"TCP  203.0.113.5:80", "TCP  203.0.113.5:21"}
    down = next(r for r in first["dests"] if r["dest"] == "198.18.0.3:8000")
    assert (down["state"], down["weight"], down["conf_weight"]) == ("down", "0", "1")
    # The error text names the program (Python's repr of it), as text.
    assert down["last_error"].startswith("[Errno 2] No such file or directory: '/nonexistent/")
    assert "<script>alert(1)</script>" in down["last_error"]
    assert "<img src=x onerror=alert(2)>" in down["last_error"]
    assert down["check"] == f"misc command={shlex.join([MISSING])}"
    web = next(r for r in first["dests"] if r["dest"] == "198.18.0.2:80")
    assert web["check"] == f"http host={HOSTILE} path=/"
    assert first["injected"] == 0

    before = int(_shown(first)[1]["TCP  203.0.113.5:80"]["conns"])
    done = lab.run(lab.client, ["curl", "-sS", "--max-time", "20", "-H", "Connection: close",
                                *[f"http://{lab.vip}/"] * N], timeout=40)  # fmt: skip
    assert done.stdout.count("\n") == N, done.stderr
    # The page reloads itself (meta refresh): a later load shows the new connections.
    deadline = time.monotonic() + 20
    page = browser.ask(eval=ROWS)
    while time.monotonic() < deadline and not (
        page["loaded"] != first["loaded"]
        and int(_shown(page)[1]["TCP  203.0.113.5:80"]["conns"]) >= before + N
    ):
        time.sleep(0.3)
        page = browser.ask(eval=ROWS)
    assert page["loaded"] != first["loaded"], "the page did not reload itself"
    assert int(_shown(page)[1]["TCP  203.0.113.5:80"]["conns"]) == before + N
    # The sync daemon (started before the traffic, so in this sample) as ipvsadm -L
    # --daemon lists it.
    assert "master sync daemon (mcast=br0, syncid=7" in d.dirctl("list", "--daemon").stdout
    assert page["sync"] == [["master", "br0", "7"]]
    _agree(d, browser)

    shot = tmp_path_factory.mktemp("status-page") / "status.png"
    assert browser.ask(screenshot=str(shot)) > 1000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"status page screenshot: {shot}")

    # /status.json: the same services as list --json, with the configured weight.
    raw = lab.run(lab.director, ["curl", "-sS", "--max-time", "5", f"http://{METRICS}/status.json"])
    doc = json.loads(raw.stdout)
    listed = _dirctl_json(d, "list", "-n")
    assert [(s["protocol"], s["addr"], s["port"]) for s in doc["services"]] == [
        (s["protocol"], s["addr"], s["port"]) for s in listed["services"]
    ]
    by = {f"{x['addr']}:{x['port']}": x for s in doc["services"] for x in s["dests"]}
    assert (by["198.18.0.3:8000"]["weight"], by["198.18.0.3:8000"]["conf_weight"]) == (0, 1)
    # Read-only: nothing but GET and HEAD.
    post = lab.run(lab.director, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                  "-X", "POST", f"http://{METRICS}/"])  # fmt: skip
    assert post.stdout == "405"
