"""The shard chains of the hooks (director/shell/netfilter.py shard_rules, render): each
worker's clients to its own pair of queues, and one worker exactly as before the
workers (requests to queue N, NAT replies to N + 1).  iptables-restore itself takes
the rendered file in tests/netns/test_netns_shard_rules.py."""

from __future__ import annotations

import re

import pytest

from director.core.shard import Shards
from director.shell.netfilter import (
    SHARD_FWD,
    SHARD_ICMP,
    SHARD_IN,
    _fwmark_chain,
    render,
    rules_text,
    shard_rules,
    worker_queue,
)

QUEUE = 10
MARK = 0x1D1
TARGET = re.compile(r"-j NFQUEUE --queue-num (\d+)( --queue-bypass)?$")


def chain(text: str, name: str) -> list[str]:
    """The rules appended to ``name``, without the ``-A name`` (in order)."""
    head = f"-A {name} "
    return [line[len(head) :] for line in text.splitlines() if line.startswith(head)]


def rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("-A ", "-I "))]


def queues(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"--queue-num (\d+)", "\n".join(rules(text)))}


@pytest.mark.parametrize("bypass", [False, True])
def test_one_worker_is_todays_hooks(bypass: bool) -> None:
    """Requests and ICMP errors to queue N, NAT replies to N + 1: one rule each, with
    no test on the address."""
    text = render(rules_text(), QUEUE, MARK, bypass, Shards(1))
    tail = " --queue-bypass" if bypass else ""
    assert chain(text, SHARD_IN) == [f"-j NFQUEUE --queue-num {QUEUE}{tail}"]
    assert chain(text, SHARD_FWD) == [f"-j NFQUEUE --queue-num {QUEUE + 1}{tail}"]
    assert chain(text, SHARD_ICMP) == [f"-j NFQUEUE --queue-num {QUEUE}{tail}"]
    assert queues(text) == {QUEUE, QUEUE + 1}
    assert render(rules_text(), QUEUE, MARK, bypass) == text  # no shards given: one
    assert not re.search(r"@[A-Z_]+@", text)  # every placeholder filled in
    assert f"--mark {MARK:#x} " in text


def test_every_queued_packet_passes_a_shard_chain() -> None:
    """The hook chains send to the shard chains only: a NFQUEUE target anywhere else
    would skip the sharding."""
    text = render(rules_text(), QUEUE, MARK, False, Shards(2, (0,)))
    for line in rules(text):
        if "NFQUEUE" in line:
            assert line.split()[1] in (SHARD_IN, SHARD_FWD, SHARD_ICMP), line
    assert "-j NFQUEUE" not in _fwmark_chain({7})
    assert f"--mark 0x7 -j {SHARD_IN}" in _fwmark_chain({7})


@pytest.mark.parametrize("bypass", [False, True])
def test_two_workers_by_the_last_address_bit(bypass: bool) -> None:
    """Even clients to worker 0 (queues N, N + 1), odd ones to worker 1 (N + 2, N + 3):
    requests by source, NAT replies by destination, ICMP errors by the quoted client;
    what matches no pattern to worker 0."""
    text = render(rules_text(), QUEUE, MARK, bypass, Shards(2, (0,)))
    tail = " --queue-bypass" if bypass else ""
    assert chain(text, SHARD_IN) == [
        f"-s 0.0.0.0/0.0.0.1 -j NFQUEUE --queue-num {QUEUE}{tail}",
        f"-s 0.0.0.1/0.0.0.1 -j NFQUEUE --queue-num {QUEUE + 2}{tail}",
        f"-j NFQUEUE --queue-num {QUEUE}{tail}",
    ]
    assert chain(text, SHARD_FWD) == [
        f"-d 0.0.0.0/0.0.0.1 -j NFQUEUE --queue-num {QUEUE + 1}{tail}",
        f"-d 0.0.0.1/0.0.0.1 -j NFQUEUE --queue-num {QUEUE + 3}{tail}",
        f"-j NFQUEUE --queue-num {QUEUE + 1}{tail}",
    ]
    icmp = chain(text, SHARD_ICMP)
    assert len(icmp) == 11  # IPIP, other, IPIP, other, then GUE, GRE, GRE-C per worker
    by_worker = [(0, 10)] * 2 + [(1, 12)] * 2 + [(0, 10)] * 3 + [(1, 12)] * 3
    for rule, (value, queue) in zip(icmp[:10], by_worker, strict=True):
        assert rule.endswith(f"&0x1={value:#x} -j NFQUEUE --queue-num {queue}{tail}"), rule
    assert icmp[-1] == f"-j NFQUEUE --queue-num {QUEUE}{tail}"
    assert queues(text) == {10, 11, 12, 13}
    for line in rules(text):
        if "NFQUEUE" in line:
            assert TARGET.search(line) and bool(TARGET.search(line).group(2)) == bypass  # type: ignore[union-attr]


def test_the_icmp_rules_read_the_quoted_packet() -> None:
    """u32 offsets from the ICMP header (RFC 792: 8 bytes, then the quoted IP header,
    RFC 791): byte 9 of that header is its protocol (IPIP is 4), bytes 16-19 its
    destination, and an IPIP packet's inner source is 20 + 12 bytes further."""
    icmp = chain("\n".join(shard_rules(Shards(2, (8,)), 0)), SHARD_ICMP)
    ipip, sixin4 = "0>>22&0x3C@16>>16&0xFF=4", "0>>22&0x3C@16>>16&0xFF=41"
    assert icmp[0] == (f"-m u32 --u32 {ipip}&&0>>22&0x3C@40&0x100=0x0 -j NFQUEUE --queue-num 0")
    gue = "0>>22&0x3C@16>>16&0xFF=17&&0>>22&0x3C@36>>16&0xE0FF=4"
    gre = "0>>22&0x3C@16>>16&0xFF=47&&0>>22&0x3C@28=0x800"
    gre_csum = "0>>22&0x3C@16>>16&0xFF=47&&0>>22&0x3C@28=0x80000800"
    assert icmp[1] == (
        f"-m u32 ! --u32 {ipip} -m u32 ! --u32 {sixin4} -m u32 ! --u32 {gue} "
        f"-m u32 ! --u32 {gre} -m u32 ! --u32 {gre_csum} -m u32 --u32 0>>22&0x3C@24&0x100=0x0"
        " -j NFQUEUE --queue-num 0"
    )
    assert icmp[2].endswith("&0x100=0x100 -j NFQUEUE --queue-num 2")
    # GUE and GRE (ipvs_udp_decap, ipvs_gre_decap): the client 8 + 20 + 8 + 4 + 12,
    # 8 + 20 + 4 + 12 and 8 + 20 + 8 + 12 bytes on.
    assert icmp[4:7] == [
        f"-m u32 --u32 {gue}&&0>>22&0x3C@52&0x100=0x0 -j NFQUEUE --queue-num 0",
        f"-m u32 --u32 {gre}&&0>>22&0x3C@44&0x100=0x0 -j NFQUEUE --queue-num 0",
        f"-m u32 --u32 {gre_csum}&&0>>22&0x3C@48&0x100=0x0 -j NFQUEUE --queue-num 0",
    ]


def test_an_ipv6_client_tunnelled_in_ipv4_is_found_by_its_own_bits() -> None:
    """A mixed-family pool's request (protocol 41, RFC 4213): the IPv6 client's source
    8 bytes into the inner IPv6 header (RFC 8200 §3), behind the director's 20-byte
    outer header: bytes 36-51 after the ICMP header; its last word at 48."""
    icmp = chain("\n".join(shard_rules(Shards(2, (8,), (0,)), 0)), SHARD_ICMP)
    sixin4 = "0>>22&0x3C@16>>16&0xFF=41"
    assert f"-m u32 --u32 {sixin4}&&0>>22&0x3C@48&0x1=0x0 -j NFQUEUE --queue-num 0" in icmp
    assert f"-m u32 --u32 {sixin4}&&0>>22&0x3C@48&0x1=0x1 -j NFQUEUE --queue-num 2" in icmp
    assert icmp[-1] == "-j NFQUEUE --queue-num 0"


def test_four_workers_with_a_slash_24_netmask() -> None:
    """Bits 8 and 9 (the third octet's last two): four patterns, queues N to N + 7."""
    shards = Shards(4, (8, 9))
    made = shard_rules(shards, QUEUE)
    assert [r for r in made if r.startswith(f"-A {SHARD_IN} -s")] == [
        f"-A {SHARD_IN} -s 0.0.{v}.0/0.0.3.0 -j NFQUEUE --queue-num {QUEUE + 2 * v}"
        for v in range(4)
    ]
    assert [r for r in made if r.startswith(f"-A {SHARD_FWD} -d")] == [
        f"-A {SHARD_FWD} -d 0.0.{v}.0/0.0.3.0 -j NFQUEUE --queue-num {QUEUE + 2 * v + 1}"
        for v in range(4)
    ]
    assert queues("\n".join(made)) == set(range(QUEUE, QUEUE + 8))


def test_three_workers_share_the_fourth_value() -> None:
    """Value 3 goes to worker 0 (3 % 3): queues 0 to 5 only."""
    made = shard_rules(Shards(3, (0, 1)), 0)
    assert f"-A {SHARD_IN} -s 0.0.0.3/0.0.0.3 -j NFQUEUE --queue-num 0" in made
    assert queues("\n".join(made)) == set(range(6))


def test_worker_queues() -> None:
    assert [worker_queue(100, w) for w in range(4)] == [100, 102, 104, 106]
