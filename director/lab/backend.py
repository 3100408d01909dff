"""A small, fast HTTP/1.x server that answers every request with its own name.

It stands in for a real server in the lab: the body says which server and which
address:port answered (``rs1 198.18.0.2:80``), so a client can see where the
director sent it and whether the port was translated.  HTTP/1.1 connections are
kept alive unless the client asks otherwise; HTTP/1.0 ones only when the client
sends ``Connection: keep-alive`` (as ``ab -k`` does).

Run as ``python -m director.lab.backend --name rs1 --port 80 --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

MAX_HEAD = 65536


class HttpNameProtocol(asyncio.Protocol):
    """One connection: parse request heads from a buffer, answer each in order."""

    def __init__(self, name: str, pad: int = 0) -> None:
        self.name = name
        self.pad = pad  # answer with at least this many bytes (the name line, then dots)
        self.buf = b""
        self.skip = 0  # body bytes of the current request still to discard
        self.transport: asyncio.Transport | None = None
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.body = f"{self.name} {host}:{port}\n".encode()
        if len(self.body) < self.pad:
            self.body += b"." * (self.pad - len(self.body) - 1) + b"\n"

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            if self.skip:
                dropped = min(self.skip, len(self.buf))
                self.buf = self.buf[dropped:]
                self.skip -= dropped
                if self.skip:
                    return
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._reply(b"HTTP/1.1", 431, b"", keep=False)
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            self._handle(head)

    def _handle(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._reply(b"HTTP/1.1", 400, b"bad request\n", keep=False)
            return
        method, _target, version = parts
        connection = b""
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"connection":
                connection = value.strip().lower()
            elif key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self._reply(version, 400, b"bad content-length\n", keep=False)
                    return
        keep = connection == b"keep-alive" if version == b"HTTP/1.0" else connection != b"close"
        self.skip = max(length, 0)
        self._reply(version, 200, b"" if method == b"HEAD" else self.body, keep=keep)

    def _reply(self, version: bytes, status: int, body: bytes, *, keep: bool) -> None:
        assert self.transport is not None
        reason = {200: b"OK", 400: b"Bad Request", 431: b"Request Header Fields Too Large"}
        length = len(self.body) if status == 200 else len(body)
        head = b"%s %d %s\r\nServer: director-lab\r\nContent-Type: text/plain\r\n" % (
            version if version in (b"HTTP/1.0", b"HTTP/1.1") else b"HTTP/1.1",
            status,
            reason.get(status, b"Error"),
        )
        head += b"Content-Length: %d\r\nConnection: %s\r\n\r\n" % (
            length,
            b"keep-alive" if keep else b"close",
        )
        self.transport.write(head + body)
        if not keep:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(name: str, host: str, ports: list[int], pad: int = 0) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    for port in ports:
        server = await loop.create_server(
            lambda: HttpNameProtocol(name, pad),
            host=host or None,
            port=port,
            # Unbound, a socket for each family (0.0.0.0 and ::): the IPv6 labs' real
            # servers answer over both.
            family=socket.AF_UNSPEC,
            reuse_address=True,
            backlog=4096,
        )
        servers.append(server)
    print(f"{name} listening on {', '.join(map(str, ports))}", file=sys.stderr, flush=True)
    await stop.wait()
    for server in servers:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True, help="the name to answer with, e.g. rs1")
    parser.add_argument("--port", type=int, action="append", required=True, help="repeatable")
    parser.add_argument("--host", default="", help="address to bind (default: all)")
    parser.add_argument(
        "--pad", type=int, default=0, help="answer with at least this many bytes (benchmarks)"
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.name, args.host, args.port, max(0, min(args.pad, 1 << 20))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
