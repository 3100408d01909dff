"""Each checker against real local servers, in a namespace of the test's own: up,
down, slow, wrong status, wrong digest, a command's exit status, a hanging command
killed at its timeout, retries."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from director.health.checkers import Target, judge_http, run_check
from director.model.health import CheckConf

SVC = ("tcp", "203.0.113.5", 80)
BODY = b"rs1 is fine\n"
PORT = 8080


def target(addr: str, **settings: object) -> Target:
    check = CheckConf(service=SVC, dest=(addr, PORT), timeout=0.5, **settings)  # type: ignore[arg-type]
    return Target(check=check, addr=addr, port=PORT, method="masq")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def http_handler(status: int = 200, body: bytes = BODY, delay: float = 0.0) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # a TCP check: connect and close
            writer.close()
            return
        await asyncio.sleep(delay)
        writer.write(b"HTTP/1.0 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    return handle


def timed_check(addr: str, handler: Handler | None, t: Target) -> tuple[bool, str, float]:
    """The check's verdict and how long the check itself took (the server's start and
    stop are not counted)."""

    async def main() -> tuple[bool, str, float]:
        server = None
        if handler is not None:
            server = await asyncio.start_server(handler, addr, PORT, reuse_address=True)
        try:
            start = time.monotonic()
            ok, reason = await run_check(t)
            return ok, reason, time.monotonic() - start
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()

    return asyncio.run(main())


def check_with(addr: str, handler: Handler | None, t: Target) -> tuple[bool, str]:
    ok, reason, _ = timed_check(addr, handler, t)
    return ok, reason


def test_tcp_up_and_down(in_netns: str) -> None:
    assert check_with(in_netns, http_handler(), target(in_netns)) == (True, "")
    ok, reason = check_with(in_netns, None, target(in_netns))
    assert not ok and "Connect call failed" in reason


def test_http_status_digest_and_text(in_netns: str) -> None:
    digest = hashlib.md5(BODY).hexdigest()
    t = target(in_netns, kind="http", digest=digest, contains="fine")
    assert check_with(in_netns, http_handler(), t) == (True, "")
    assert check_with(in_netns, http_handler(status=503), t) == (False, "HTTP status 503")
    ok, reason = check_with(in_netns, http_handler(body=b"other\n"), t)
    assert not ok and reason.startswith("body digest")
    t = target(in_netns, kind="http", status=(301,))
    assert check_with(in_netns, http_handler(status=301), t)[0]
    assert not check_with(in_netns, http_handler(status=200), t)[0]


def test_slow_server_times_out(in_netns: str) -> None:
    """A 0.5 s check of a server that answers after 8 s gives up long before the answer
    (the bound is wide: a loaded machine may be slow to give up, never 8 s slow)."""
    slow = http_handler(delay=8.0)
    ok, reason, took = timed_check(in_netns, slow, target(in_netns, kind="http"))
    assert not ok and "timed out" in reason
    assert took < 4.0


def test_retries_with_delay(in_netns: str) -> None:
    t = target(in_netns, retry=2, retry_delay=0.2)
    ok, _, took = timed_check(in_netns, None, t)
    assert not ok and took >= 0.4  # a lower bound: load only makes it longer


def test_misc_exit_status_and_hang_killed(in_netns: str, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    script = tmp_path / "check.sh"
    script.write_text(f'#!/bin/sh\n[ "$DIRECTOR_RS_ADDR" = {in_netns} ] && test -e {flag}\n')
    script.chmod(0o755)
    t = target(in_netns, kind="misc", command=str(script))
    assert check_with(in_netns, None, t) == (False, "exit status 1")
    flag.touch()
    assert check_with(in_netns, None, t) == (True, "exit status 0")
    pidfile = tmp_path / "pid"
    hang = replace(t.check, command=f"sh -c 'echo $$ > {pidfile}; exec sleep 30'")
    ok, reason, took = timed_check(in_netns, None, replace(t, check=hang))
    assert not ok and "timed out" in reason and took < 10  # killed at 0.5 s, not after 30
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_judge_http_without_network() -> None:
    check = CheckConf(service=SVC, kind="http")
    assert judge_http(check, b"HTTP/1.1 204 No\r\n\r\n") == (True, "")
    assert judge_http(check, b"garbage") == (False, "not an HTTP answer")
    assert judge_http(check, b"HTTP/1.1 abc X\r\n\r\n") == (False, "bad HTTP status line")


def test_tcp_and_http_over_ipv6(in_netns6: str) -> None:
    """The checkers connect to [addr]:port; the HTTP check names an IPv6 literal host
    in brackets, as a URI does (RFC 3986 3.2.2)."""

    def slow(t: Target) -> Target:  # what is tested is the address, not the time
        return replace(t, check=replace(t.check, timeout=3.0))

    assert check_with(in_netns6, http_handler(), slow(target(in_netns6))) == (True, "")
    assert not check_with(in_netns6, None, target(in_netns6))[0]
    hosts: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        hosts.extend(line for line in head.split(b"\r\n") if line.startswith(b"Host:"))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        await writer.drain()
        writer.close()

    t = slow(target(in_netns6, kind="http", contains="fine"))
    assert check_with(in_netns6, handle, t) == (True, "")
    assert hosts == [b"Host: [2001:db8:2::2]"]
