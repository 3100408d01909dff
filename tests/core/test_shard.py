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
    hex6,
    lowest_bits,
    persistence_mask,
    persistence_mask6,
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


def persistent6(plen: int, vip: str = "2001:db8:1::100", port: int = 80) -> str:
    return (
        f"-A -t [{vip}]:{port} -s rr -p 300 -M {plen}\n"
        f"-a -t [{vip}]:{port} -r [2001:db8:2::2]:{port} -m\n"
    )


def test_an_ipv6_persistent_service_leaves_the_ipv4_bits_alone() -> None:
    """An IPv6 prefix constrains the IPv6 bits only: the IPv4 ones stay the lowest."""
    config = load_rules(persistent6(64))
    assert persistence_mask(config) == 0xFFFFFFFF
    assert Shards.for_config(2, config).bits == (0,)


def test_an_ipv4_persistent_service_leaves_the_ipv6_bits_alone() -> None:
    config = load_rules(persistent("255.255.255.0"))
    assert persistence_mask6(config) == (1 << 128) - 1
    assert Shards.for_config(4, config).bits6 == (0, 1)


def test_ipv6_without_persistence_the_lowest_bits_of_the_address() -> None:
    """IPv6 clients are cut as IPv4 ones: by the address's last bits."""
    assert Shards.for_config(4, load_rules(PLAIN)).bits6 == (0, 1)
    assert Shards.for_config(16, Config()).bits6 == (0, 1, 2, 3)
    assert Shards.for_config(1, Config()).bits6 == ()


def test_minus_m_64_moves_the_ipv6_bits_into_the_prefix() -> None:
    """-M 64 on an IPv6 service: ip_vs_sched_persist (net/netfilter/ipvs/ip_vs_core.c)
    masks the client with ipv6_addr_prefix(&snet.in6, &iph->saddr.in6, 64), so one
    template covers a whole /64: the shard bits must be among the first 64 of the 128,
    the lowest of them being bit 64 counted from the address's end."""
    config = load_rules(persistent6(64))
    assert persistence_mask6(config) == ((1 << 64) - 1) << 64
    shards = Shards.for_config(4, config)
    assert shards.bits6 == (64, 65)
    assert shards.mask6 == 3 << 64
    assert shards.covers(config)


def test_two_ipv6_prefixes_shard_inside_both() -> None:
    """-M 64 and -M 48: the AND is the /48, whose lowest bits are 80 on."""
    config = load_rules(persistent6(64) + persistent6(48, vip="2001:db8:1::101", port=443))
    assert persistence_mask6(config) == ((1 << 48) - 1) << 80
    assert Shards.for_config(3, config).bits6 == (80, 81)


def test_a_slash_64_client_network_stays_on_one_worker() -> None:
    """Every client of one /64 has one owner, and the four /64s 2001:db8:1:0..3::/64
    are spread over four workers (their 64th and 65th bits from the end differ)."""
    shards = Shards.for_config(4, load_rules(persistent6(64)))
    for subnet in range(4):
        owners = {
            shards.owner(ipaddress.IPv6Address(f"2001:db8:1:{subnet}::{host}").packed)
            for host in ("1", "2", "ffff", "1234:5678:9abc")
        }
        assert owners == {subnet}


def test_ip6tables_masks_per_worker() -> None:
    """What the hooks match IPv6 clients with: the address and mask in address form,
    as ip6tables takes a non-contiguous mask (and prints it back, ip6tables -S)."""
    assert Shards.for_config(2, Config()).where6() == [("::/::1", 0), ("::1/::1", 1)]
    three = Shards.for_config(3, load_rules(persistent6(64)))
    assert three.where6() == [
        ("::/0:0:0:3::", 0),
        ("0:0:0:1::/0:0:0:3::", 1),
        ("0:0:0:2::/0:0:0:3::", 2),
        ("0:0:0:3::/0:0:0:3::", 0),
    ]
    assert Shards().where6() == []
    assert hex6(1 << 64) == "0:0:0:1::"


@given(
    addr=st.integers(0, (1 << 128) - 1),
    workers=st.integers(1, MAX_WORKERS),
    plen=st.integers(1, 128),
)
def test_ipv6_owner_agrees_with_the_rules_patterns(addr: int, workers: int, plen: int) -> None:
    """owner() and the ip6tables patterns agree for IPv6 clients, and two clients of one
    prefix (the persistence template's snet) have one owner."""
    config = load_rules(persistent6(plen))
    shards = Shards.for_config(workers, config)
    matching = [w for pattern, m, w in shards.patterns6() if addr & m == pattern]
    assert len(matching) == 1
    assert shards.owner(addr.to_bytes(16, "big")) == matching[0]
    host_bits = (1 << (128 - plen)) - 1
    neighbour = addr ^ host_bits  # same prefix, other host part
    assert shards.owner(neighbour.to_bytes(16, "big")) == matching[0]


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


def test_ipv6_clients_are_sharded_by_their_last_bits() -> None:
    shards = Shards(4, (0, 1), (0, 1))
    owners = [shards.owner(ipaddress.IPv6Address(f"2001:db8::{last}").packed) for last in range(8)]
    assert owners == [0, 1, 2, 3, 0, 1, 2, 3]


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
    slash64 = load_rules(persistent6(64))
    assert not Shards.for_config(2, Config()).covers(slash64)  # bit 0 is a host bit
    assert Shards.for_config(2, slash64).covers(load_rules(persistent6(72)))  # bit 64 kept
    assert not Shards.for_config(2, slash64).covers(load_rules(persistent6(60)))


def test_dotted() -> None:
    assert dotted(mask_of("0.0.3.0")) == "0.0.3.0"
    assert dotted(0xFFFFFFFF) == "255.255.255.255"
