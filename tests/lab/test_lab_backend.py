"""The lab's HTTP backend: keep-alive rules of HTTP/1.0 and 1.1, pipelining, bodies."""

from __future__ import annotations

import asyncio
from typing import Any

from director.lab.backend import HttpNameProtocol


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("198.18.0.2", 80) if name == "sockname" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _serve(*chunks: bytes) -> tuple[FakeTransport, list[bytes]]:
    proto = HttpNameProtocol("rs1")
    transport = FakeTransport()
    proto.connection_made(transport)
    for chunk in chunks:
        proto.data_received(chunk)
    responses = [r for r in transport.written.split(b"HTTP/1.") if r]
    return transport, responses


def test_http10_without_keepalive_gets_the_name_and_is_closed() -> None:
    transport, responses = _serve(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert len(responses) == 1
    assert b" 200 OK\r\n" in responses[0]
    assert responses[0].endswith(b"\r\n\r\nrs1 198.18.0.2:80\n")
    assert b"Connection: close" in responses[0]
    assert transport.closed


def test_http10_keepalive_as_ab_k_sends_it_stays_open() -> None:
    transport, responses = _serve(
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n" * 2,
    )
    assert len(responses) == 2
    assert all(b"Connection: keep-alive" in r for r in responses)
    assert b"Content-Length: 18\r\n" in responses[0]
    assert not transport.closed


def test_http11_pipelined_requests_split_across_reads_and_close() -> None:
    transport, responses = _serve(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT",
        b"TP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert len(responses) == 2
    assert b"Connection: keep-alive" in responses[0]
    assert b"Connection: close" in responses[1]
    assert transport.closed


def test_request_bodies_are_skipped_and_head_has_no_body() -> None:
    transport, responses = _serve(
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel",
        b"loHEAD / HTTP/1.1\r\n\r\n",
    )
    assert len(responses) == 2
    assert responses[0].endswith(b"rs1 198.18.0.2:80\n")
    assert responses[1].endswith(b"\r\n\r\n")
    assert not transport.closed


def test_garbage_gets_400_and_a_close() -> None:
    transport, _ = _serve(b"hello\r\n\r\n")
    assert b" 400 " in transport.written
    assert transport.closed
