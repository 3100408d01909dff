"""Conntrack's events, dump and deletions (director/shell/conntrack.py) against the
kernel's own conntrack, in a NAT lab of the test's own (no daemon).

The director namespace holds plain iptables rules, as the fast path's hooks would: a
DNAT of VIP:80-83 to 198.18.0.2:8080 (nat PREROUTING) and, on the NEW packets, marks
(mangle PREROUTING): VIP:80 gets the packet mark FAST_TAG|5 saved into the connmark
(CONNMARK --save-mark), VIP:83 the connmark FAST_TAG|6 directly, VIP:81 0x4D000005 (another
tag, the same slot) and VIP:82 nothing.  FAST_TAG = 0x4C << 24 under 0xFF000000 (issue
12).  A TCP server in the real server's namespace reads a request to its end and
answers; the client's sockets and the CtEvents / CtTable objects are made in their
namespaces by a thread that enters them (topology.in_netns) and used from here.

What conntrack says is the kernel's: the state names are tcp_conntrack_names[]
(net/netfilter/nf_conntrack_proto_tcp.c), a connection closed by the client first ends
in TIME_WAIT (tcp_conntracks[]: the last ACK of the FINs), the counters (with
nf_conntrack_acct = 1) count IP bytes, headers included, so at least the payload.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from director.lab import topology
from director.shell.conntrack import (
    Clients,
    CtEvent,
    CtEvents,
    CtTable,
    CtTuple,
)

TAG, MASK = 0x4C << 24, 0xFF000000
OTHER_TAG = 0x4D << 24
VIP = topology.VIP
CLIENT = socket.inet_aton(topology.CLIENT_ADDR)
RS_ADDR, RS_PORT = "198.18.0.2", 8080
RS = socket.inet_aton(RS_ADDR)
CLIENT6, VIP6, RS6 = "2001:db8:1::10", "2001:db8:1::100", "2001:db8:2::2"
REQUEST, ANSWER = 5000, 3000  # bytes each way
WAIT = 10.0  # seconds for what the kernel sends at once
T = TypeVar("T")


@pytest.fixture(scope="module")
def lab() -> Iterator[topology.Lab]:
    built = topology.build(topology.new_prefix("dct"))
    try:
        rules = [
            ["-t", "nat", "-A", "PREROUTING", "-d", VIP, "-p", "tcp", "--dport", "80:83",
             "-j", "DNAT", "--to-destination", f"{RS_ADDR}:{RS_PORT}"],
            ["-t", "mangle", "-A", "PREROUTING", "-d", VIP, "-p", "tcp", "--dport", "80",
             "-m", "conntrack", "--ctstate", "NEW", "-j", "MARK", "--set-mark", hex(TAG | 5)],
            ["-t", "mangle", "-A", "PREROUTING", "-d", VIP, "-p", "tcp", "--dport", "80",
             "-m", "conntrack", "--ctstate", "NEW", "-j", "CONNMARK", "--save-mark"],
            ["-t", "mangle", "-A", "PREROUTING", "-d", VIP, "-p", "tcp", "--dport", "83",
             "-m", "conntrack", "--ctstate", "NEW", "-j", "CONNMARK", "--set-mark",
             hex(TAG | 6)],
            ["-t", "mangle", "-A", "PREROUTING", "-d", VIP, "-p", "tcp", "--dport", "81",
             "-m", "conntrack", "--ctstate", "NEW", "-j", "CONNMARK", "--set-mark",
             hex(OTHER_TAG | 5)],
        ]  # fmt: skip
        for rule in rules:
            built.run(built.director, ["iptables", "-w", *rule])
        ipv6(built)
        yield built
    finally:
        topology.teardown(built)


def ipv6(lab: topology.Lab) -> None:
    """The lab's IPv6 (SPEC §3: 2001:db8:1::/64 outside, 2001:db8:2::/64 inside), a
    DNAT of [VIP6]:80 to [RS6]:8080 and the connmark FAST_TAG|7 on its NEW packets."""
    rs = lab.real_servers[0].netns
    for ns, argv in [
        (lab.client, ["addr", "add", f"{CLIENT6}/64", "dev", "eth0", "nodad"]),
        (lab.client, ["-6", "route", "add", "default", "via", "2001:db8:1::1"]),
        (lab.director, ["addr", "add", "2001:db8:1::1/64", "dev", "ext0", "nodad"]),
        (lab.director, ["addr", "add", f"{VIP6}/128", "dev", "ext0", "nodad"]),
        (lab.director, ["addr", "add", "2001:db8:2::1/64", "dev", "br0", "nodad"]),
        (rs, ["addr", "add", f"{RS6}/64", "dev", "eth0", "nodad"]),
        (rs, ["-6", "route", "add", "default", "via", "2001:db8:2::1"]),
    ]:
        lab.run(ns, ["ip", *argv])
    topology.set_sysctl(lab.director, "net.ipv6.conf.all.forwarding", "1")
    for rule in (
        ["-t", "nat", "-A", "PREROUTING", "-d", VIP6, "-p", "tcp", "--dport", "80",
         "-j", "DNAT", "--to-destination", f"[{RS6}]:{RS_PORT}"],
        ["-t", "mangle", "-A", "PREROUTING", "-d", VIP6, "-p", "tcp", "--dport", "80",
         "-m", "conntrack", "--ctstate", "NEW", "-j", "CONNMARK", "--set-mark", hex(TAG | 7)],
    ):  # fmt: skip
        lab.run(lab.director, ["ip6tables", "-w", *rule])


class Server:
    """Answers ANSWER bytes to each request read to its end, a thread a connection."""

    def __init__(self, lab: topology.Lab) -> None:
        def listen() -> socket.socket:  # both families
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", RS_PORT))
            s.listen(64)
            return s

        self.sock = topology.in_netns(lab.real_servers[0].netns, listen)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.received: list[int] = []
        self.thread = threading.Thread(target=self.serve, name="ct server", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        """A connection the test cut off (its entry deleted) may end in a timeout."""
        with conn:
            conn.settimeout(WAIT)
            got = 0
            try:
                while chunk := conn.recv(65536):
                    got += len(chunk)
                self.received.append(got)
                conn.sendall(b"a" * ANSWER)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT)
        self.sock.close()


@pytest.fixture
def server(lab: topology.Lab) -> Iterator[Server]:
    s = Server(lab)
    yield s
    s.close()


def in_director(lab: topology.Lab, action: Callable[[], T]) -> T:
    return topology.in_netns(lab.director, action)


@pytest.fixture
def events(lab: topology.Lab) -> Iterator[CtEvents]:
    ev = in_director(lab, lambda: CtEvents(TAG, MASK))
    yield ev
    ev.close()


@pytest.fixture
def table(lab: topology.Lab) -> Iterator[CtTable]:
    t = in_director(lab, CtTable)
    yield t
    t.close()


def connect(lab: topology.Lab, port: int, vip: str = VIP) -> socket.socket:
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    s = topology.in_netns(lab.client, lambda: socket.socket(family, socket.SOCK_STREAM))
    s.settimeout(WAIT)
    s.connect((vip, port))
    return s


def exchange(s: socket.socket) -> int:
    """Send the request, close our side first, read the answer to its end; bytes read."""
    s.sendall(b"q" * REQUEST)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while chunk := s.recv(65536):
        got += len(chunk)
    s.close()
    return got


def orig_of(s: socket.socket, port: int) -> CtTuple:
    return CtTuple(CLIENT, s.getsockname()[1], socket.inet_aton(VIP), port)


def wait_for(
    ev: CtEvents, seen: list[CtEvent], done: Callable[[list[CtEvent]], bool]
) -> list[CtEvent]:
    """Read events into ``seen`` until ``done(seen)``; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    with selectors.DefaultSelector() as sel:
        sel.register(ev, selectors.EVENT_READ)
        while not done(seen):
            left = deadline - time.monotonic()
            assert left > 0, f"conntrack did not say it within {WAIT} s: {seen}"
            sel.select(left)
            seen += ev.read()
    return seen


def of(seen: list[CtEvent], orig: CtTuple) -> list[CtEvent]:
    return [e for e in seen if e.orig == orig]


def test_a_marked_connection_from_new_to_destroy(
    lab: topology.Lab, server: Server, events: CtEvents, table: CtTable
) -> None:
    """new, updates through ESTABLISHED to TIME_WAIT, the tuples both ways, the
    connmark; with accounting on, the dump lists the entry with its counters;
    delete() removes it, its destroy event carries the counters."""
    topology.set_sysctl(lab.director, "net.netfilter.nf_conntrack_acct", "1")
    s = connect(lab, 80)
    orig = orig_of(s, 80)
    assert exchange(s) == ANSWER
    seen: list[CtEvent] = []
    wait_for(events, seen, lambda seen: any(e.state == "TIME_WAIT" for e in of(seen, orig)))
    mine = of(seen, orig)
    assert mine[0].kind == "new" and {e.kind for e in mine[1:]} == {"update"}
    reply = CtTuple(RS, RS_PORT, CLIENT, orig.sport)
    for e in mine:
        assert (e.protocol, e.orig, e.reply, e.mark) == (6, orig, reply, TAG | 5)
        assert e.ct_id is not None and e.ct_id == mine[0].ct_id
    states = [e.state for e in mine if e.state is not None]
    assert "ESTABLISHED" in states
    assert states.index("ESTABLISHED") < states.index("TIME_WAIT")
    assert states[-1] == "TIME_WAIT"
    assert all(e.timeout is not None for e in mine)

    (entry,) = of(table.dump(TAG, MASK), orig)
    assert (entry.kind, entry.state, entry.mark, entry.reply) == (
        "dump",
        "TIME_WAIT",
        TAG | 5,
        reply,
    )
    assert entry.timeout is not None and 0 < entry.timeout <= 120  # TIME_WAIT: 2 MINS
    assert entry.counters.orig_bytes >= REQUEST and entry.counters.reply_bytes >= ANSWER
    assert entry.ct_id == mine[0].ct_id

    assert table.delete(entry) is True
    wait_for(events, seen, lambda seen: any(e.kind == "destroy" for e in of(seen, orig)))
    (gone,) = [e for e in of(seen, orig) if e.kind == "destroy"]
    assert (gone.reply, gone.mark, gone.state) == (reply, TAG | 5, "TIME_WAIT")
    # deleted with time left: ctnetlink_conntrack_event says how much (skip_zero)
    assert gone.timeout is not None and 0 < gone.timeout <= entry.timeout
    assert gone.counters.orig_bytes >= REQUEST and gone.counters.reply_bytes >= ANSWER
    assert gone.counters.orig_packets >= 3 and gone.counters.reply_packets >= 3
    assert of(table.dump(TAG, MASK), orig) == []
    assert table.delete(entry) is False
    assert server.received[-1] == REQUEST
    assert (events.malformed, events.lost) == (0, False)


def test_other_marks_are_not_reported(
    lab: topology.Lab, server: Server, events: CtEvents, table: CtTable
) -> None:
    """A connection with another tag (same slot) and one with no mark: no event (the
    kernel's filter dropped them: none reached the socket to be ignored), not in the
    dump by FAST_TAG; the other tag's dump has its own; the marked one is there."""
    other, unmarked, marked = connect(lab, 81), connect(lab, 82), connect(lab, 80)
    origs = {port: orig_of(s, port) for port, s in ((81, other), (82, unmarked), (80, marked))}
    seen: list[CtEvent] = []
    wait_for(events, seen, lambda seen: any(e.state == "ESTABLISHED" for e in of(seen, origs[80])))
    dumped = table.dump(TAG, MASK)
    others = table.dump(OTHER_TAG, MASK)
    for s in (other, unmarked, marked):
        exchange(s)
    seen += events.read()
    assert of(seen, origs[81]) == [] and of(seen, origs[82]) == []
    assert events.ignored == 0
    assert [e.mark for e in of(dumped, origs[80])] == [TAG | 5]
    assert of(dumped, origs[81]) == [] and of(dumped, origs[82]) == []
    assert all(e.mark & MASK == TAG for e in dumped)
    assert [e.mark for e in of(others, origs[81])] == [OTHER_TAG | 5]
    assert all(e.mark & MASK == OTHER_TAG for e in others)


def test_delete_marked_takes_one_slot_then_the_tag(
    lab: topology.Lab, server: Server, events: CtEvents, table: CtTable
) -> None:
    """Slot 5 (VIP:80) and slot 6 (VIP:83) open at once: deleting FAST_TAG|5 under the
    full mask destroys only the first; FAST_TAG under the tag's mask the second."""
    five, six = connect(lab, 80), connect(lab, 83)
    o5, o6 = orig_of(five, 80), orig_of(six, 83)
    seen: list[CtEvent] = []
    wait_for(events, seen, lambda seen: all(
        any(e.state == "ESTABLISHED" for e in of(seen, o)) for o in (o5, o6)))  # fmt: skip
    assert {e.mark for e in of(seen, o6)} == {TAG | 6}

    table.delete_marked(TAG | 5, 0xFFFFFFFF)
    wait_for(events, seen, lambda seen: any(e.kind == "destroy" for e in of(seen, o5)))
    live = table.dump(TAG, MASK)
    assert of(live, o5) == [] and [e.state for e in of(live, o6)] == ["ESTABLISHED"]
    assert not any(e.kind == "destroy" for e in of(seen, o6))

    table.delete_marked(TAG, MASK)
    wait_for(events, seen, lambda seen: any(e.kind == "destroy" for e in of(seen, o6)))
    assert of(table.dump(TAG, MASK), o6) == []
    five.close()
    six.close()


def test_a_full_buffer_says_events_were_lost(lab: topology.Lab, server: Server) -> None:
    """A receive buffer too small for the events of 20 connections: the kernel drops
    some (netlink_overrun), read() says so by ``lost``, and the dump has them all."""
    ev = in_director(lab, lambda: CtEvents(TAG, MASK, rcvbuf=4096))
    table = in_director(lab, CtTable)
    try:
        origs = []
        for _ in range(20):
            s = connect(lab, 80)
            origs.append(orig_of(s, 80))
            exchange(s)
        time.sleep(0.2)  # the last FIN's ACK on its way
        got = ev.read()
        assert ev.lost is True and ev.enobufs >= 1
        assert len(got) < 20 * 4  # new, ESTABLISHED, ..., TIME_WAIT for each
        dumped = {e.orig for e in table.dump(TAG, MASK)}
        assert set(origs) <= dumped
    finally:
        ev.close()
        table.close()


def test_ipv6_events_dump_and_delete(
    lab: topology.Lab, server: Server, events: CtEvents, table: CtTable
) -> None:
    """The same for IPv6: 16-byte addresses both ways, the dump (AF_UNSPEC) lists the
    entry, delete() names it in AF_INET6 (ctnetlink_parse_tuple reads the family from
    nfgenmsg) and its destroy event follows."""
    s = connect(lab, 80, VIP6)
    packed = {a: socket.inet_pton(socket.AF_INET6, a) for a in (CLIENT6, VIP6, RS6)}
    orig = CtTuple(packed[CLIENT6], s.getsockname()[1], packed[VIP6], 80)
    assert exchange(s) == ANSWER
    seen: list[CtEvent] = []
    wait_for(events, seen, lambda seen: any(e.state == "TIME_WAIT" for e in of(seen, orig)))
    reply = CtTuple(packed[RS6], RS_PORT, packed[CLIENT6], orig.sport)
    assert {(e.reply, e.mark) for e in of(seen, orig)} == {(reply, TAG | 7)}
    (entry,) = of(table.dump(TAG, MASK), orig)
    assert (entry.state, entry.reply) == ("TIME_WAIT", reply)
    assert table.delete(entry) is True
    wait_for(events, seen, lambda seen: any(e.kind == "destroy" for e in of(seen, orig)))
    assert of(table.dump(TAG, MASK), orig) == []


def test_the_kernel_filters_the_states_and_marks(
    lab: topology.Lab, server: Server, events: CtEvents, table: CtTable
) -> None:
    """A socket with the kernel-side filter (event_filter) for ESTABLISHED and
    FIN_WAIT gets, of a marked connection the client closes first, exactly those two
    of the updates the unfiltered socket gets (SYN_RECV, ESTABLISHED, FIN_WAIT,
    CLOSE_WAIT, LAST_ACK, TIME_WAIT: tcp_conntracks[]), then its destroy; of the other
    tag's connection and the unmarked one nothing at all (the kernel dropped them, so
    none was read and ignored here)."""
    wanted = ("ESTABLISHED", "FIN_WAIT")
    filtered = in_director(lab, lambda: CtEvents(TAG, MASK, tcp_states=wanted))
    try:
        other, unmarked, marked = connect(lab, 81), connect(lab, 82), connect(lab, 80)
        orig = orig_of(marked, 80)
        others = (orig_of(other, 81), orig_of(unmarked, 82))
        for s in (other, unmarked, marked):
            exchange(s)
        seen: list[CtEvent] = []
        wait_for(events, seen, lambda seen: any(e.state == "TIME_WAIT" for e in of(seen, orig)))
        every = [e.state for e in of(seen, orig) if e.kind == "update"]
        assert every == ["SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
                         "TIME_WAIT"], every  # fmt: skip
        got: list[CtEvent] = []
        wait_for(filtered, got, lambda got: any(e.state == "FIN_WAIT" for e in got))
        time.sleep(0.2)  # anything else would have come by now
        got += filtered.read()
        assert [(e.kind, e.state) for e in of(got, orig)] == [("update", s) for s in wanted]
        assert all(e.orig == orig for e in got), got
        assert not [e for e in got if e.orig in others]
        assert (filtered.ignored, filtered.malformed) == (0, 0)
        (entry,) = of(table.dump(TAG, MASK), orig)
        assert table.delete(entry) is True
        wait_for(filtered, got, lambda got: any(e.kind == "destroy" for e in got))
        assert [e.kind for e in of(got, orig)] == ["update", "update", "destroy"]
    finally:
        filtered.close()


def test_a_worker_gets_the_events_of_its_own_clients_only(
    lab: topology.Lab, server: Server, events: CtEvents
) -> None:
    """Sockets selecting clients by address bits (CtEvents.select): the client
    203.0.113.10 has its lowest bit 0, so the socket for value 0 under mask 1 gets its
    IPv4 connection's events and the one for value 1 none; the IPv6 client's go only to
    the socket that takes IPv6 clients; select(None) takes everyone again."""
    even = in_director(lab, lambda: CtEvents(TAG, MASK))
    odd = in_director(lab, lambda: CtEvents(TAG, MASK))
    try:
        even.select(Clients(mask=1, values=(0,), ipv6=True))
        odd.select(Clients(mask=1, values=(1,), ipv6=False))
        four, six = connect(lab, 80), connect(lab, 80, VIP6)
        o4 = orig_of(four, 80)
        o6 = CtTuple(socket.inet_pton(socket.AF_INET6, CLIENT6), six.getsockname()[1],
                     socket.inet_pton(socket.AF_INET6, VIP6), 80)  # fmt: skip
        exchange(four)
        exchange(six)
        seen: list[CtEvent] = []
        wait_for(events, seen, lambda seen: all(
            any(e.state == "TIME_WAIT" for e in of(seen, o)) for o in (o4, o6)))  # fmt: skip
        got: list[CtEvent] = []
        wait_for(even, got, lambda got: all(
            any(e.state == "TIME_WAIT" for e in of(got, o)) for o in (o4, o6)))  # fmt: skip
        assert {e.orig for e in got} == {o4, o6}
        time.sleep(0.2)
        assert odd.read() == [] and odd.ignored == 0
        odd.select(None)
        third = connect(lab, 80)
        o3 = orig_of(third, 80)
        exchange(third)
        late: list[CtEvent] = []
        wait_for(odd, late, lambda late: any(e.state == "TIME_WAIT" for e in of(late, o3)))
    finally:
        even.close()
        odd.close()
