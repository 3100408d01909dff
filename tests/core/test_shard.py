"""The shards of ``directord --workers N``: which client address bits cut them, and
which worker owns a client (director/core/shard.py).

The expected bit positions come from the netmasks themselves (IPVS's persistence
template covers ``caddr & svc->netmask``: ip_vs_sched_persist in
net/netfilter/ipvs/ip_vs_core.c), never from the code under test: a shard bit must be
one the netmask keeps, so that one client network is one template on one worker.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.core.shard import (
    MAX_WORKERS,
    Shards,
    dotted,
    lowest_bits,
    persistence_mask,
    shard_bits_needed,
)
from director.ctl.ipvsadm import load_rules
from director.model.config import Config

PLAIN = "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"


def persistent(netmask: str, vip: str = "203.0.113.6", port: int = 80) -> str:
    return (
        f"-A -t {vip}:{port} -s rr -p 300 -M {netmask}\n"
        f"-a -t {vip}:{port} -r 198.18.0.2:{port} -m\n"
    )


def mask_of(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


@pytest.mark.parametrize(
    ("workers", "bits"),
    [(1, ()), (2, (0,)), (3, (0, 1)), (4, (0, 1)), (5, (0, 1, 2)), (16, (0, 1, 2, 3))],
)
def test_without_persistence_the_lowest_bits_of_the_address(
    workers: int, bits: tuple[int, ...]
) -> None:
    """Where clients differ most: the address's last bits, as many as tell the workers
    apart (2 ** bits >= workers)."""
    for rules in ("", PLAIN):
        assert Shards.for_config(workers, load_rules(rules)).bits == bits


def test_a_persistent_service_with_a_slash_24_netmask_moves_the_bits_to_8_on() -> None:
    """-M 255.255.255.0: one /24 is one template, so the last octet may not split it."""
    config = load_rules(PLAIN + persistent("255.255.255.0"))
    assert persistence_mask(config) == mask_of("255.255.255.0")
    assert Shards.for_config(2, config).bits == (8,)
    assert Shards.for_config(4, config).bits == (8, 9)
    assert Shards.for_config(16, config).bits == (8, 9, 10, 11)
    assert Shards.for_config(4, config).mask == mask_of("0.0.3.0")


def test_two_persistent_services_shard_inside_both_netmasks() -> None:
    """The bits lie in the AND of the netmasks: /24 and /22 leave bits 10 on."""
    config = load_rules(
        persistent("255.255.255.0") + persistent("255.255.252.0", vip="203.0.113.7", port=443)
    )
    assert persistence_mask(config) == mask_of("255.255.252.0")
    assert Shards.for_config(4, config).bits == (10, 11)
    assert Shards.for_config(3, config).mask == mask_of("0.0.12.0")


def test_fewer_bits_than_needed_gives_as_many_as_there_are() -> None:
    """-M 128.0.0.0 keeps one bit: four workers get the two shards it can cut (and
    -M 0.0.0.0, one template for everyone, leaves one shard)."""
    one_bit = load_rules(persistent("128.0.0.0"))
    assert Shards.for_config(4, one_bit).bits == (31,)
    assert {w for _, _, w in Shards.for_config(4, one_bit).patterns()} == {0, 1}
    nothing = load_rules(persistent("0.0.0.0"))
    assert Shards.for_config(4, nothing).bits == ()
    assert list(Shards.for_config(4, nothing).patterns()) == [(0, 0, 0)]
    assert lowest_bits(0b1010_0000, 5) == (5, 7)


def test_an_ipv6_persistent_service_leaves_the_ipv4_bits_alone() -> None:
    """IPv6 clients are not sharded (worker 0): an IPv6 netmask constrains nothing."""
    config = load_rules(
        "-A -t [2001:db8::5]:80 -s rr -p 300 -M 64\n-a -t [2001:db8::5]:80 -r [2001:db8::2]:80 -m\n"
    )
    assert persistence_mask(config) == 0xFFFFFFFF
    assert Shards.for_config(2, config).bits == (0,)


@pytest.mark.parametrize("workers", range(1, MAX_WORKERS + 1))
def test_bits_needed_tell_every_worker_apart(workers: int) -> None:
    """Every worker owns at least one shard value and none is out of range."""
    shards = Shards.for_config(workers, Config())
    assert 2 ** shard_bits_needed(workers) >= workers
    assert shard_bits_needed(workers) == 0 or 2 ** (shard_bits_needed(workers) - 1) < workers
    owners = [worker for _, _, worker in shards.patterns()]
    assert set(owners) == set(range(workers))


def test_three_workers_over_four_values_take_v_mod_3() -> None:
    """The shard value v (bit i of v is address bit bits[i]) belongs to worker v % N."""
    shards = Shards(3, (0, 1))
    assert list(shards.patterns()) == [(0, 3, 0), (1, 3, 1), (2, 3, 2), (3, 3, 0)]
    high = Shards(3, (8, 9))
    assert list(high.patterns()) == [(0, 768, 0), (256, 768, 1), (512, 768, 2), (768, 768, 0)]


@given(
    addr=st.integers(0, 0xFFFFFFFF),
    workers=st.integers(1, MAX_WORKERS),
    mask=st.integers(0, 0xFFFFFFFF),
)
def test_owner_agrees_with_the_rules_patterns(addr: int, workers: int, mask: int) -> None:
    """The daemon's owner() (which, the restart dump) and iptables' patterns agree: the
    one pattern the address matches (addr & mask == pattern) names its owner."""
    shards = Shards(workers, lowest_bits(mask, shard_bits_needed(workers)))
    matching = [w for pattern, m, w in shards.patterns() if addr & m == pattern]
    assert len(matching) == 1
    owner = shards.owner(addr.to_bytes(4, "big"))
    assert owner == matching[0]
    assert 0 <= owner < workers


def test_owner_by_hand() -> None:
    shards = Shards(2, (8,))
    assert shards.owner(bytes([198, 51, 100, 7])) == 0  # third octet 100: bit 8 clear
    assert shards.owner(bytes([198, 51, 101, 7])) == 1
    assert shards.owner(bytes([198, 51, 101, 200])) == 1
    assert Shards(3, (0, 1)).owner(bytes([198, 51, 100, 3])) == 0  # value 3 -> 3 % 3


def test_ipv6_clients_belong_to_worker_0() -> None:
    shards = Shards(4, (0, 1))
    for last in range(8):
        assert shards.owner(ipaddress.IPv6Address(f"2001:db8::{last}").packed) == 0


def test_covers_says_whether_the_netmasks_hold_the_shard_bits() -> None:
    """A persistence netmask added later must keep the bits the workers were cut by at
    start, or a client network would be split between two workers' templates."""
    slash24 = load_rules(persistent("255.255.255.0"))
    shards = Shards.for_config(2, slash24)
    assert shards.covers(slash24)
    assert shards.covers(load_rules(PLAIN))
    assert shards.covers(load_rules(persistent("255.255.255.128")))  # bit 8 kept
    assert not shards.covers(load_rules(persistent("255.255.254.0")))  # bit 8 dropped
    lowest = Shards.for_config(2, Config())
    assert not lowest.covers(slash24)
    assert Shards().covers(slash24)  # one worker: no bits, nothing to keep


def test_dotted() -> None:
    assert dotted(mask_of("0.0.3.0")) == "0.0.3.0"
    assert dotted(0xFFFFFFFF) == "255.255.255.255"
