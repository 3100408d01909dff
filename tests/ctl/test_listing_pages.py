"""`list -c` on a million entries: the daemon answers page by page, each page small
and quick, and the pages together list every entry once (with no change between them).

Before paging, one `list -c` made one answer of every entry: about 170 MB for a
million, past the client's MAX_MESSAGE (16 MiB), after seconds of the daemon's loop
spent building it.
"""

from __future__ import annotations

import json
import time

import pytest

from director.core.conn import Conn
from director.core.engine import Director
from director.core.service import pack_addr
from director.core.xmit import bind_xmit
from director.ctl import listing
from director.ctl.dispatch import dispatch_bytes
from director.ctl.protocol import MAX_MESSAGE, encode_request, load_message
from director.ctl.report import CONN_PAGE, snapshot
from director.ctl.snapshot import Snapshot
from director.model.config import Config, DestConf, ServiceConf

VIP, RS = "203.0.113.5", "198.18.0.2"
ENTRIES = 1_000_000


class Target:
    """What dispatch needs of the daemon for `list`: the report over a real Director."""

    def __init__(self, director: Director) -> None:
        self.director = director

    def snapshot(self, *, conns: bool, offset: int = 0, limit: int = CONN_PAGE) -> Snapshot:
        return snapshot(self.director, (900, 120, 300), 0.0, conns=conns, offset=offset,
                        limit=limit)  # fmt: skip


@pytest.fixture(scope="module")
def full() -> Director:
    d = Director()
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, dests=(DestConf(RS, 80, "masq"),)),)))
    svc = next(iter(d.services))
    dest = svc.dests[0]
    xmit = bind_xmit(dest)
    vaddr = pack_addr(VIP)
    for n in range(ENTRIES):  # clients 198.51.100.0/24 and 203.0.113.0/24, every port
        net = (198, 51, 100) if (n >> 8) % 2 else (203, 0, 113)
        caddr = bytes((*net, n % 256))
        conn = Conn(d.tcp, 6, caddr, 1024 + n // 512, vaddr, 80, svc, dest, xmit)
        conn.expires = 900.0
        d.conns.add(conn)
    assert len(d.conns) == ENTRIES
    return d


def test_a_million_entries_come_in_pages(full: Director) -> None:
    target = Target(full)
    offset, pages, seen, slowest, largest = 0, 0, set(), 0.0, 0
    while True:
        request = encode_request("list", {"conns": True, "offset": offset})
        started = time.thread_time()  # the thread's CPU: other load does not count
        answer = dispatch_bytes(target, request)  # type: ignore[arg-type]
        slowest = max(slowest, time.thread_time() - started)
        largest = max(largest, len(answer))
        snap = load_message(answer)["result"]
        pages += 1
        assert len(snap["conns"]) <= CONN_PAGE
        seen.update((c["caddr"], c["cport"]) for c in snap["conns"])
        if snap["conns_next"] is None:
            break
        assert snap["conns_next"] == offset + len(snap["conns"])
        offset = snap["conns_next"]
    assert len(seen) == ENTRIES and pages == -(-ENTRIES // CONN_PAGE)
    assert largest < MAX_MESSAGE // 8, largest
    # What the loop spends on one page: tens of milliseconds (most of it the walk to
    # the offset); the bound is wide, for a loaded 2-core machine, and still far
    # below what one answer of the whole table took (seconds).
    assert slowest < 0.5, slowest
    print(f"{pages} pages, slowest {slowest * 1000:.1f} ms, largest {largest} bytes")


def test_the_pages_print_as_one_listing(full: Director) -> None:
    target = Target(full)
    request = encode_request("list", {"conns": True})
    first = load_message(dispatch_bytes(target, request))  # type: ignore[arg-type]
    text = listing.format_conns(first["result"])
    assert text.startswith("IPVS connection entries\n")
    more = first["result"]
    more["conns"] = more["conns"][:1]
    assert not listing.format_conns(more, header=False).startswith("IPVS")


@pytest.mark.parametrize("args", [{"offset": -1}, {"offset": "0"}, {"limit": True}])
def test_a_bad_page_is_refused(full: Director, args: dict[str, object]) -> None:
    request = encode_request("list", {"conns": True, **args})
    answer = json.loads(dispatch_bytes(Target(full), request))  # type: ignore[arg-type]
    assert answer["ok"] is False and answer["fault"] == "caller"
