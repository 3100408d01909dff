"""The IPv6 hooks as rendered (iptables/director6.rules, shard_rules6) and what the
sync selects for them; the kernel loads them in tests/netns/test_netns_shell6.py.

The u32 offsets are the ICMPv6 error's layout, worked by hand: the fixed IPv6 header
is 40 bytes (RFC 8200 §3: next header at byte 6, source at 8, destination at 24), the
ICMPv6 type its first byte (RFC 4443 §2.1: byte 40), the invoking packet starts 8
bytes into the error message (RFC 4443 §3.1-3.3: byte 48), so its next header is byte
54, its destination bytes 72-87 and, behind a 40-byte outer header of a tunnelled
request, the inner source bytes 96-111 (the last word: 108)."""

from __future__ import annotations

from director.core.shard import Shards
from director.ctl.ipvsadm import load_rules
from director.model.config import ServiceConf
from director.shell.netfilter import (
    RS6_SET,
    RS_ADDR6_SET,
    RS_SET,
    SETS6,
    VIP6_SET,
    VIP_SET,
    ipv6_service,
    marks6_of,
    render6,
    rules6_text,
    selection,
    shard_patterns6,
    shard_rules6,
)

QUEUE = 10


def test_one_worker_takes_every_ipv6_client() -> None:
    assert shard_rules6(shard_patterns6(Shards(1)), QUEUE) == [
        "-A DIRECTOR_SHARD_IN -j NFQUEUE --queue-num 10",
        "-A DIRECTOR_SHARD_FWD -j NFQUEUE --queue-num 11",
        "-A DIRECTOR_SHARD_ICMP -j NFQUEUE --queue-num 10",
    ]


def test_two_workers_by_the_clients_last_bit() -> None:
    rules = shard_rules6(shard_patterns6(Shards(2, (0,), (0,))), QUEUE, bypass=True)
    tail = " --queue-bypass"
    assert rules[:4] == [
        f"-A DIRECTOR_SHARD_IN -s ::/::1 -j NFQUEUE --queue-num 10{tail}",
        f"-A DIRECTOR_SHARD_FWD -d ::/::1 -j NFQUEUE --queue-num 11{tail}",
        f"-A DIRECTOR_SHARD_ICMP -m u32 --u32 54>>24=41&&108&0x1=0x0"
        f" -j NFQUEUE --queue-num 10{tail}",
        f"-A DIRECTOR_SHARD_ICMP -m u32 ! --u32 54>>24=41 -m u32 ! --u32 54>>24=4"
        f" -m u32 --u32 84&0x1=0x0 -j NFQUEUE --queue-num 10{tail}",
    ]
    assert rules[4] == f"-A DIRECTOR_SHARD_IN -s ::1/::1 -j NFQUEUE --queue-num 12{tail}"
    assert rules[-3:] == [
        f"-A DIRECTOR_SHARD_IN -j NFQUEUE --queue-num 10{tail}",
        f"-A DIRECTOR_SHARD_FWD -j NFQUEUE --queue-num 11{tail}",
        f"-A DIRECTOR_SHARD_ICMP -j NFQUEUE --queue-num 10{tail}",
    ]


def test_an_ipv4_client_tunnelled_in_ipv6_is_found_by_its_own_bits() -> None:
    """A mixed-family pool's request (next header 4, RFC 2473): the IPv4 client's source
    12 bytes into the inner IPv4 header (RFC 791), behind the 40-byte outer header:
    byte 48 + 40 + 12 = 100."""
    shards = Shards(2, (8,), (0,))
    rules = shard_rules6(shard_patterns6(shards), QUEUE, patterns4=list(shards.patterns()))
    assert (
        "-A DIRECTOR_SHARD_ICMP -m u32 --u32 54>>24=4&&100&0x100=0x0 -j NFQUEUE --queue-num 10"
        in rules
    )
    assert (
        "-A DIRECTOR_SHARD_ICMP -m u32 --u32 54>>24=4&&100&0x100=0x100 -j NFQUEUE --queue-num 12"
        in rules
    )


def test_a_mask_across_words_tests_each_word() -> None:
    """Bits 31 and 32 of the address are in two u32 words: one test each."""
    ((rule, *_),) = [[r for r in shard_rules6([(1 << 32, 3 << 31, 1)], QUEUE) if "! " in r]]
    assert "--u32 80&0x1=0x1&&84&0x80000000=0x0" in rule


def test_the_ipv6_file_is_filled_in() -> None:
    text = render6(rules6_text(), QUEUE, 0x1D1)
    assert "@" not in text
    assert "-A DIRECTOR_OUT -m mark --mark 0x1d1 -j CT --notrack" in text
    assert "-A DIRECTOR_SHARD_IN -j NFQUEUE --queue-num 10" in text
    # ICMPv6 errors (every type below 128: ip_vs_in_icmp_v6 takes any whose
    # ICMPV6_INFOMSG_MASK bit is clear, net/netfilter/ipvs/ip_vs_core.c) go to the ICMP shard
    # chain, neighbour discovery (133-137) never to a queue.
    assert "--u32 6>>24=58&&40>>24=0:127 -j DIRECTOR_SHARD_ICMP" in text
    assert "--u32 6>>24=58&&40>>24=133:137 -j RETURN" in text
    assert text.index("133:137") < text.index("director-vip6 dst -j DIRECTOR_SHARD_IN")


def test_ipv6_addresses_go_to_the_inet6_twins() -> None:
    config = load_rules(
        "-A -t [2001:db8:1::100]:80 -s rr\n"
        "-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:8080 -m\n"
        "-A -t 203.0.113.5:80 -s rr\n"
        "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
    )
    wanted, _ = selection(config)
    assert set(SETS6) <= set(wanted)
    assert wanted[VIP6_SET] == {("2001:db8:1::100", 0, 0)}
    assert wanted[VIP_SET] == {("203.0.113.5", 0, 0)}
    assert wanted[RS6_SET] == {("2001:db8:2::2", 6, 8080)}
    assert wanted[RS_SET] == {("198.18.0.2", 6, 80)}
    assert wanted[RS_ADDR6_SET] == {("2001:db8:2::2", 0, 0)}


def test_ipv6_firewall_mark_services_go_to_ip6tables() -> None:
    """A firewall-mark service's family is its address's: "" for IPv4, "::" for IPv6
    (ipvsadm -f 8 -6, as the rules file gives it)."""
    v4 = ServiceConf(protocol="fwm", fwmark=7)
    (v6,) = load_rules("-A -f 8 -6 -s rr\n").services
    assert not ipv6_service(v4) and ipv6_service(v6)
    assert ipv6_service(ServiceConf(protocol="tcp", addr="2001:db8:1::100", port=80))
    from director.model.config import Config

    assert marks6_of(Config(services=[v4, v6])) == {8}
