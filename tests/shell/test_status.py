"""The status page and /status.json, from the daemon's own sample, without root: what
the loop adds to the sample, what the page prints of it (escaped), and the listener's
routes (read-only).  tests/netns/test_netns_status.py loads the page from the real
daemon in a real headless browser."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from shlex import join, quote
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import make_wsgi_app

from director.health.state import CheckState
from director.shell import status
from director.shell.daemon import Daemon
from director.shell.metrics import MetricsServer, Sample, _routes, take_sample
from tests.target import close, make_daemon, settings_in

HOSTILE = "<script>alert(1)</script>&\"'<img src=x onerror=alert(2)>"
COMMAND = join(["/bin/false", HOSTILE])
RULES = (
    "-A -t 203.0.113.5:80 -s rr\n"
    "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 3\n"
    "-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m -w 2\n"
    "-A -f 7 -s wlc -p 60\n"
    "-a -f 7 -r 198.18.0.4:0 -g -w 1\n"
    f"# director-check -t 203.0.113.5:80 -r 198.18.0.2:80 --type http --host {quote(HOSTILE)}\n"
    "# director-check -t 203.0.113.5:80 -r 198.18.0.3:8000 --type misc "
    f"--command {quote(COMMAND)}\n"
)
KEY2 = (("tcp", "203.0.113.5", 80), ("198.18.0.2", 80))
KEY3 = (("tcp", "203.0.113.5", 80), ("198.18.0.3", 8000))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = make_daemon(settings_in(tmp_path), RULES)
    try:
        yield d
    finally:
        close(d)


def _sample(d: Daemon) -> Sample:
    sample = take_sample(d.director, {})
    return replace(sample, status=status.rows(d.director, d.config, d.health, d.sync))


class _Page(HTMLParser):
    """Every start tag and the text of every cell marked with data-key, per row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.rows: list[dict[str, str]] = []
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "tr":
            self.rows.append({k: v or "" for k, v in found.items()})
        self._key = found.get("data-key") if tag == "td" else None

    def handle_data(self, data: str) -> None:
        if self._key is not None and self.rows:
            row = self.rows[-1]
            row[self._key] = row.get(self._key, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._key = None


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def test_rows_have_list_json_shape_with_health_and_configured_weight(daemon: Daemon) -> None:
    daemon.health.states[KEY2] = CheckState(state="down", last_error=HOSTILE)
    daemon.commit(daemon.config)  # the check's verdict in force: quiesced to weight 0
    snap = daemon.snapshot(conns=False)
    rows = status.rows(daemon.director, daemon.config, daemon.health, daemon.sync)
    assert [s["scheduler"] for s in rows["services"]] == [s["scheduler"] for s in snap["services"]]
    web = rows["services"][0]
    by = {f"{d['addr']}:{d['port']}": d for d in web["dests"]}
    listed = {f"{d['addr']}:{d['port']}": d for d in snap["services"][0]["dests"]}
    for where, dest in by.items():
        for key, value in listed[where].items():
            assert dest[key] == value, (where, key)
    down = by["198.18.0.2:80"]
    assert (down["state"], down["weight"], down["conf_weight"]) == ("down", 0, 3)
    assert down["last_error"] == HOSTILE
    assert down["check"] == {"type": "http", "target": ["198.18.0.2", 80], "path": "/",
                             "host": HOSTILE}  # fmt: skip
    misc = by["198.18.0.3:8000"]
    assert misc["check"]["command"] == COMMAND
    assert (misc["state"], misc["conf_weight"]) == ("unknown", 2)
    fwm = rows["services"][1]
    assert (fwm["protocol"], fwm["fwmark"], fwm["persistent"]) == ("FWM", 7, 60)
    assert "state" not in fwm["dests"][0] and "check" not in fwm["dests"][0]
    assert rows["sync"] == []


def test_the_page_prints_every_hostile_string_as_text(daemon: Daemon) -> None:
    daemon.health.states[KEY3] = CheckState(state="down", last_error=HOSTILE)
    page_text = status.render(status.data(_sample(daemon)))
    page = _parse(page_text)
    assert "script" not in page.tags and "img" not in page.tags
    assert HOSTILE not in page_text  # only its escaped form is there
    dests = {r["data-dest"]: r for r in page.rows if "data-dest" in r}
    assert dests["198.18.0.3:8000"]["last_error"] == HOSTILE
    assert dests["198.18.0.3:8000"]["check"] == f"misc command={COMMAND}"
    assert dests["198.18.0.2:80"]["check"] == f"http host={HOSTILE} path=/"
    assert dests["198.18.0.2:80"]["method"] == "Masq"
    assert dests["198.18.0.4:0"]["method"] == "Route"
    services = [r["data-service"] for r in page.rows if r.get("class") == "service"]
    assert services == ["TCP  203.0.113.5:80", "FWM  7"]


def test_the_page_shows_the_directors_own_health(daemon: Daemon) -> None:
    sample = replace(
        _sample(daemon),
        conn_entries=250,
        conn_limit=1000,
        drops=(("no_dest", 4), ("defense", 2)),
        defenses=(("drop_entry", 0), ("drop_packet", 1), ("secure_tcp", 0)),
        drop_rate=10,
        restarts=3,
        queues=((0, {"kernel_dropped": 5, "kernel_user_dropped": 1}), (1, {"kernel_dropped": 2})),
    )
    doc = status.data(sample)
    assert doc["director"]["queue_drops"] == 8
    page = _parse(status.render(doc))
    cells: dict[str, str] = {}
    for row in page.rows:
        cells.update({k: v for k, v in row.items() if not k.startswith(("data-", "class"))})
    assert cells["conn_entries"] == "250 (25.0%)"
    assert cells["queue_drops"] == "8"
    assert cells["worker_restarts"] == "3"
    assert cells["drop_rate"] == "10"
    drops = {r["data-drop"]: r["drop"] for r in page.rows if "data-drop" in r}
    assert drops == {"no_dest": "4", "defense": "2"}


def _get(app: Any, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO(b"")
    got: dict[str, Any] = {}

    def start_response(line: str, headers: list[tuple[str, str]]) -> None:
        got["line"], got["headers"] = line, dict(headers)

    body = b"".join(app(environ, start_response))
    return got["line"], got["headers"], body


def test_the_listener_serves_the_page_and_json_of_the_published_sample(daemon: Daemon) -> None:
    server = MetricsServer(
        "127.0.0.1:9", status.pages(status.Watch())
    )  # never started: its routes only
    server.publish(_sample(daemon))
    app = _routes(make_wsgi_app(server.registry), server.pages, lambda: server.collector.sample)
    line, headers, body = _get(app, "/")
    assert line == "200 OK" and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"TCP  203.0.113.5:80" in body
    line, headers, body = _get(app, "/status.json")
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["services"][0]["dests"][0]["conf_weight"] in (2, 3)
    assert _get(app, "/metrics")[0] == "200 OK"
    assert _get(app, "/other")[0].startswith("404")
    for method in ("POST", "PUT", "DELETE"):
        assert _get(app, "/", method)[0].startswith("405")
        assert _get(app, "/status.json", method)[0].startswith("405")
    assert _get(app, "/", "HEAD")[2] == b""


def test_a_listener_without_pages_serves_metrics_only() -> None:
    server = MetricsServer("127.0.0.1:9")
    app = _routes(make_wsgi_app(server.registry), server.pages, lambda: server.collector.sample)
    assert _get(app, "/")[0].startswith("404")
    assert _get(app, "/status.json")[0].startswith("404")


def test_ipv6_addresses_are_text_in_brackets(tmp_path: Path) -> None:
    d = make_daemon(
        settings_in(tmp_path),
        "-A -t [2001:db8:1::100]:80 -s rr\n-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:8080 -m\n"
        "-A -f 1 -6 -s rr\n-a -f 1 -6 -r [2001:db8:2::3]:0 -m\n",
    )
    try:
        page = _parse(status.render(status.data(_sample(d))))
    finally:
        close(d)
    services = [r["data-service"] for r in page.rows if r.get("class") == "service"]
    assert services == ["TCP  [2001:db8:1::100]:80", "FWM  1 IPv6"]
    dests = [r["data-dest"] for r in page.rows if "data-dest" in r]
    assert dests == ["[2001:db8:2::2]:8080", "[2001:db8:2::3]:0"]


def test_a_view_reads_the_published_sample_not_the_live_tables(daemon: Daemon) -> None:
    """What the page shows changes when the loop publishes, not when the tables do."""
    server = MetricsServer(
        "127.0.0.1:9", status.pages(status.Watch())
    )  # never started: its routes only
    server.publish(_sample(daemon))
    app = _routes(make_wsgi_app(server.registry), server.pages, lambda: server.collector.sample)
    web = daemon.director.services.lookup(6, bytes([203, 0, 113, 5]), 80, 0)
    assert web is not None
    web.stats.conns = 12345
    daemon.commit(replace(daemon.config, services=()))  # every service gone, live
    assert len(json.loads(_get(app, "/status.json")[2])["services"]) == 2
    assert b"12345" not in _get(app, "/")[2]
    server.publish(_sample(daemon))
    assert json.loads(_get(app, "/status.json")[2])["services"] == []


def test_the_rows_come_while_the_page_is_watched_and_a_first_view_waits_for_them(
    daemon: Daemon,
) -> None:
    watch = status.Watch()
    assert not watch.watched(time.monotonic())  # nobody looked: the tick adds nothing
    bare, full = take_sample(daemon.director, {}), _sample(daemon)
    published = [bare, bare, full]  # the loop's next ticks
    seen = watch.sample(lambda: published.pop(0) if len(published) > 1 else published[0])
    assert seen is full
    assert watch.watched(time.monotonic())
    assert not watch.watched(time.monotonic() + status.WATCHED)
    # A loop that publishes no rows (stuck): the view is given what there is.
    start = time.monotonic()
    assert watch.sample(lambda: bare) is bare
    assert status.WAIT <= time.monotonic() - start < status.WAIT + 2
