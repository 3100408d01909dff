"""The checks themselves, as coroutines: TCP connect, HTTP/HTTPS GET, an external
command, and (for DR/TUN) the VIP-path probe.  Each returns ``(ok, reason)``.

They run in the health thread's event loop (``director.health.runner``), never in the
daemon's loop, so a slow or hanging real server stalls nothing but its own check.
keepalived's semantics: HTTP_GET/SSL_GET send ``GET path`` and compare the status
(any 2xx when none is given) and, if asked, the MD5 of the body (what ``genhash``
prints); MISC_CHECK runs a program whose exit status 0 means healthy and kills it at
the timeout (its whole process group).  Certificates are not verified, as keepalived
does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import signal
import ssl
from dataclasses import dataclass

from director.health import synprobe
from director.model.health import CheckConf

MAX_RESPONSE = 1 << 20  # bytes of an HTTP answer read at most (headers and body)


@dataclass(frozen=True, slots=True)
class Target:
    """One check bound to one real server: everything the check needs, by value."""

    check: CheckConf
    addr: str
    port: int  # where the check connects: the check's port, else the real server's
    method: str  # the real server's forwarding method
    vip: str = ""  # the service's VIP and port, for the VIP-path probe
    vport: int = 0


Outcome = tuple[bool, str]


async def tcp_check(addr: str, port: int) -> Outcome:
    _, writer = await asyncio.open_connection(addr, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def http_check(target: Target, tls: bool) -> Outcome:
    check = target.check
    # An IPv6 literal goes in brackets (RFC 3986 3.2.2, the Host header's uri-host).
    host = check.host or (f"[{target.addr}]" if ":" in target.addr else target.addr)
    reader, writer = await asyncio.open_connection(
        target.addr,
        target.port,
        ssl=_tls_context() if tls else None,
        server_hostname=(check.host or None) if tls else None,
    )
    try:
        request = (
            f"GET {check.path} HTTP/1.0\r\nHost: {host}\r\n"
            "User-Agent: director-healthcheck\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        data = await reader.read(MAX_RESPONSE)
        while len(data) < MAX_RESPONSE:
            more = await reader.read(MAX_RESPONSE - len(data))
            if not more:
                break
            data += more
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return judge_http(check, data)


def judge_http(check: CheckConf, data: bytes) -> Outcome:
    """Status, digest and substring of one HTTP answer, as keepalived judges them."""
    head, sep, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        return False, "not an HTTP answer"
    try:
        status = int(status_line[1])
    except ValueError:
        return False, "bad HTTP status line"
    wanted = check.status
    if (wanted and status not in wanted) or (not wanted and not 200 <= status < 300):
        return False, f"HTTP status {status}"
    if check.digest:
        digest = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if digest != check.digest:
            return False, f"body digest {digest}"
    if check.contains and check.contains.encode() not in body:
        return False, "body lacks the expected text"
    return True, ""


async def misc_check(target: Target) -> Outcome:
    """Run the command (no shell); exit 0 is healthy; killed with its group at the
    timeout.  It sees DIRECTOR_RS_ADDR and DIRECTOR_RS_PORT in its environment."""
    env = dict(os.environ, DIRECTOR_RS_ADDR=target.addr, DIRECTOR_RS_PORT=str(target.port))
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(target.check.command),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return (code == 0), f"exit status {code}"


async def vip_probe(target: Target, timeout: float) -> Outcome:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, synprobe.probe, target.vip, target.vport, target.addr, target.method, timeout
    )


async def check_once(target: Target) -> Outcome:
    """One attempt of the check, within its timeout."""
    check = target.check
    try:
        async with asyncio.timeout(check.timeout):
            if check.kind == "misc":
                ok, reason = await misc_check(target)
            elif check.kind in ("http", "https"):
                ok, reason = await http_check(target, tls=check.kind == "https")
            else:
                ok, reason = await tcp_check(target.addr, target.port)
    except TimeoutError:
        return False, f"timed out after {check.timeout:g}s"
    except (OSError, ssl.SSLError, ValueError) as exc:
        return False, str(exc) or type(exc).__name__
    if ok and check.via_vip and target.vip:
        return await vip_probe(target, check.timeout)
    return ok, reason


async def run_check(target: Target) -> Outcome:
    """The check with its retries (keepalived's retry and delay_before_retry)."""
    ok, reason = await check_once(target)
    for _ in range(target.check.retry):
        if ok:
            break
        await asyncio.sleep(target.check.retry_delay)
        ok, reason = await check_once(target)
    return ok, reason
