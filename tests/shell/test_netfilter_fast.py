"""The hooks of --fast-path kernel (director/shell/netfilter.py, iptables/director-fast.rules):
what they add to the every-packet hooks, and only in that mode; the sets they select; the
DNAT chain that binds a fast flow to the real server its mark names.  The kernel takes
them in tests/netns/test_netns_fast_rules.py."""

from __future__ import annotations

import json
import re

import pytest

from director.core.service import pack_addr, service_key
from director.core.shard import Shards
from director.ctl.ipvsadm import load_rules
from director.shell.daemon import Settings
from director.shell.netfilter import (
    FAST_BITS,
    FAST_MASK,
    FAST_RS_SET,
    FAST_SET,
    FAST_SETS,
    FAST_TAG,
    RS6_SET,
    RS_ADDR_SET,
    RS_ANY_SET,
    RS_SET,
    SETS,
    SETS6,
    SHARD_IN,
    SHARD_NEW,
    TUNNEL_SET,
    TUNNEL_SETS,
    VIP_SET,
    Hooks,
    acct_script,
    fast_dnat_rules,
    fast_mark,
    fast_rules_text,
    fast_servers,
    fast_service,
    fast_shard_rules,
    fast_slot,
    parse_fast_counters,
    render,
    render_fast,
    rules_text,
    selection,
    shard_rules,
)

QUEUE = 10
MARK = 0x4C56

RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m
-a -t 203.0.113.5:80 -r 198.18.0.3:8080 -m
-a -t 203.0.113.5:80 -r 198.18.0.4:80 -g
-A -u 203.0.113.5:53 -s rr
-a -u 203.0.113.5:53 -r 198.18.0.2:5353 -m
-A -t 203.0.113.6:443 -s rr
-a -t 203.0.113.6:443 -r 198.18.0.9:443 -i
-A -f 7 -s rr
-a -f 7 -r 198.18.0.5 -m
-a -f 7 -r 198.18.0.2:80 -m
-A -t 203.0.113.7:0 -s rr -p 300
-a -t 203.0.113.7:0 -r 198.18.0.6 -m
-A -t [2001:db8::5]:80 -s rr
-a -t [2001:db8::5]:80 -r [2001:db8::2]:80 -m
"""


TUNNELED = f"-m set --match-set {TUNNEL_SET} src,src -j RETURN"  # ignore_tunneled's


def chain(text: str, name: str) -> list[str]:
    head = f"-A {name} "
    return [line[len(head) :] for line in text.splitlines() if line.startswith(head)]


def tables(text: str) -> list[str]:
    return [line[1:] for line in text.splitlines() if line.startswith("*")]


def fast_render(shards: Shards | None = None, bypass: bool = False) -> str:
    return render(rules_text(), QUEUE, MARK, bypass, shards, fast_rules_text())


def test_off_is_the_every_packet_hooks_exactly() -> None:
    """Off (the default): the placeholders of the fast rules go, lines and all, and
    nothing else of director.rules changes; no mangle or nat table is named."""
    off = render(rules_text(), QUEUE, MARK, False, Shards(2, (0,)))
    lines = rules_text().splitlines(keepends=True)
    source = "".join(line for line in lines if not re.match(r"@FAST_\w+@$", line))
    assert off == render(source, QUEUE, MARK, False, Shards(2, (0,)))
    assert not re.search(r"@[A-Z_]+@", off)
    assert tables(off) == ["raw", "filter"]
    # (ignore_tunneled's RETURN, in every mode, aside)
    off_rules = "\n".join(line for line in off.splitlines()
                          if not line.startswith("#") and TUNNEL_SET not in line)  # fmt: skip
    for word in ("director-fast", "connmark", "conntrack", "DNAT", SHARD_NEW, "RETURN"):
        assert word not in off_rules


def test_fast_adds_rules_and_two_tables_only() -> None:
    """Every every-packet rule is there, in its order; the fast ones come on top."""
    off = render(rules_text(), QUEUE, MARK)
    fast = fast_render()
    assert not re.search(r"@[A-Z_]+@", fast)
    assert tables(fast) == ["raw", "filter", "mangle", "nat"]
    off_rules = [line for line in off.splitlines() if line.startswith("-")]
    fast_rules = [line for line in fast.splitlines() if line.startswith("-")]
    it = iter(fast_rules)
    assert all(rule in it for rule in off_rules)  # a subsequence
    added = [rule for rule in fast_rules if rule not in off_rules]
    spliced, own = render_fast(fast_rules_text(), QUEUE)
    theirs = [line for lines in spliced.values() for line in lines]
    assert added == theirs + [line for line in own.splitlines() if line.startswith("-")]


def test_raw_lets_conntrack_see_the_fast_flows() -> None:
    """Before any NOTRACK: the fast services' flows (with only the conntrack events the
    workers read: state changes and ends, and the timeout policy of their protocol),
    their NAT real servers' replies, ICMP errors to a VIP."""
    pre = chain(fast_render(), "DIRECTOR_PRE")
    first_notrack = next(i for i, rule in enumerate(pre) if "--notrack" in rule)
    events = "-j CT --ctevents protoinfo,destroy --timeout"
    assert pre[:first_notrack] == [
        TUNNELED,  # ignore_tunneled's, first in every mode
        f"-p tcp -m set --match-set {FAST_SET} dst,dst {events} director-tcp",
        f"-p udp -m set --match-set {FAST_SET} dst,dst {events} director-udp",
        f"-m set --match-set {FAST_SET} dst,dst -j RETURN",
        f"-m set --match-set {FAST_RS_SET} src,src -j RETURN",
        f"-p icmp -m u32 --u32 0>>22&0x3C@0>>24=3,11 -m set --match-set {VIP_SET} dst -j RETURN",
    ]
    assert [TUNNELED, *pre[first_notrack:]] == chain(render(rules_text(), QUEUE, MARK),
                                                     "DIRECTOR_PRE")  # fmt: skip


def test_filter_takes_the_connmarked_flows_first() -> None:
    fast = fast_render()
    tagged = f"-m connmark --mark {FAST_TAG:#x}/{FAST_MASK:#x}"
    assert chain(fast, "DIRECTOR_FWD")[:2] == [TUNNELED, f"{tagged} -j ACCEPT"]
    assert chain(fast, "DIRECTOR_IN")[:4] == [
        TUNNELED,
        f"{tagged} -m conntrack --ctstate DNAT -j RETURN",
        f"{tagged} -j DROP",
        f"-m conntrack --ctstate NEW -m set --match-set {FAST_SET} dst,dst -j RETURN",
    ]


@pytest.mark.parametrize("bypass", [False, True])
@pytest.mark.parametrize("shards", [Shards(1), Shards(2, (0,)), Shards(4, (8, 9))])
def test_the_mangle_shard_chain_is_the_requests_one(shards: Shards, bypass: bool) -> None:
    """The opening packets go to the queue their requests go to, by the same shards."""
    fast = fast_render(shards, bypass)
    requests = chain("\n".join(shard_rules(shards, QUEUE, bypass)), SHARD_IN)
    assert chain(fast, SHARD_NEW) == requests
    assert chain("\n".join(fast_shard_rules(shards, QUEUE, bypass)), SHARD_NEW) == requests
    assert chain(fast, "DIRECTOR_FAST") == [
        TUNNELED,
        f"-m conntrack --ctstate NEW -m set --match-set {FAST_SET} dst,dst -j {SHARD_NEW}",
    ]
    mangle = fast[fast.index("*mangle") : fast.index("*nat")]
    assert "-I PREROUTING 1 -j DIRECTOR_FAST\n" in mangle


def test_nat_saves_the_mark_then_dnats() -> None:
    nat = chain(fast_render(), "DIRECTOR_FAST_NAT")
    assert nat == [
        f"-m mark ! --mark {FAST_TAG:#x}/{FAST_MASK:#x} -j RETURN",
        f"-j CONNMARK --save-mark --nfmask {FAST_BITS:#x} --ctmask {FAST_BITS:#x}",
        "-j DIRECTOR_FAST_DNAT",
    ]
    spliced, own = render_fast(fast_rules_text(), QUEUE)
    assert tables(own) == ["mangle", "nat"]
    assert sum(len(lines) for lines in spliced.values()) == 9  # one CT rule per protocol


def test_connmark_save_touches_only_directors_bits() -> None:
    """xt_connmark.c connmark_tg_shift, XT_CONNMARK_SAVE with shift 0:
    newmark = (ct->mark & ~ctmask) ^ (skb->mark & nfmask).  The host's bits of the
    connmark (16-23, and any it had outside director's) stay; director's become the
    mark's, even over an old slot."""
    rule = chain(fast_render(), "DIRECTOR_FAST_NAT")[1]
    nfmask = int(re.search(r"--nfmask (\S+)", rule).group(1), 16)  # type: ignore[union-attr]
    ctmask = int(re.search(r"--ctmask (\S+)", rule).group(1), 16)  # type: ignore[union-attr]
    for ctmark, host_mark in ((0, 0), (0x00AB0000, 0x00CD0000), (0x4C00FFFF, 0x00120000)):
        skb_mark = fast_mark(0x1234) | host_mark
        newmark = (ctmark & ~ctmask & 0xFFFFFFFF) ^ (skb_mark & nfmask)
        assert newmark & 0x00FF0000 == ctmark & 0x00FF0000
        assert newmark & FAST_BITS == fast_mark(0x1234)
        assert fast_slot(newmark) == 0x1234


def test_the_fast_mark() -> None:
    assert FAST_TAG == 0x4C000000 and FAST_MASK == 0xFF000000 and FAST_BITS == 0xFF00FFFF
    assert fast_mark(1) == 0x4C000001 and fast_mark(0xFFFF) == 0x4C00FFFF
    for bad in (0, -1, 0x10000):
        with pytest.raises(ValueError):
            fast_mark(bad)
    assert fast_slot(fast_mark(77)) == 77
    assert fast_slot(0x4C56) is None and fast_slot(0) is None and fast_slot(FAST_TAG) is None
    # The worker's send mark, matched whole on OUTPUT, is no fast mark (nor a tagged one).
    send = Settings().send_mark
    assert send & FAST_MASK != FAST_TAG
    assert all(fast_mark(slot) != send for slot in (1, send & 0xFFFF))


def test_which_services_are_fast() -> None:
    kinds = {
        (s.protocol, s.addr, s.port or s.fwmark): fast_service(s)
        for s in load_rules(RULES).services
    }
    assert kinds == {
        ("tcp", "203.0.113.5", 80): True,
        ("udp", "203.0.113.5", 53): True,
        ("tcp", "203.0.113.6", 443): True,  # TUN only: tracked, never marked
        ("fwm", "", 7): False,
        ("tcp", "203.0.113.7", 0): False,  # port zero: no one port to match
        ("tcp", "2001:db8::5", 80): False,  # iptables: IPv4 only
    }


def test_selection_fast() -> None:
    """The fast services' NAT real servers leave director-rs (their replies are
    conntrack's); fwmark, port-zero and IPv6 ones stay; every NAT real server stays in
    director-rs-addr (its unrelated ICMP errors still reach the worker)."""
    config = load_rules(RULES)
    wanted, marks = selection(config, fast=True)
    off, off_marks = selection(config)
    assert set(wanted) == set(SETS) | set(SETS6) | set(FAST_SETS)
    assert set(off) == set(SETS) | set(SETS6)
    assert marks == off_marks == {7}
    assert wanted[FAST_SET] == {
        ("203.0.113.5", 6, 80),
        ("203.0.113.5", 17, 53),
        ("203.0.113.6", 6, 443),
    }
    assert wanted[FAST_RS_SET] == {
        ("198.18.0.2", 6, 80),
        ("198.18.0.3", 6, 8080),
        ("198.18.0.2", 17, 5353),
    }
    assert wanted[RS_SET] == {
        ("198.18.0.2", 6, 80),  # the fwmark service's, not the TCP service's
        ("198.18.0.2", 17, 80),
    }
    assert wanted[RS6_SET] == off[RS6_SET] == {("2001:db8::2", 6, 80)}  # the inet6 twin
    assert off[RS_SET] == wanted[RS_SET] | {
        ("198.18.0.3", 6, 8080),
        ("198.18.0.2", 17, 5353),
    }
    assert wanted[RS_ANY_SET] == off[RS_ANY_SET] == {("198.18.0.5", 0, 0), ("198.18.0.6", 0, 0)}
    assert wanted[RS_ADDR_SET] == off[RS_ADDR_SET]
    assert wanted[VIP_SET] == off[VIP_SET]


def slots_of(rules: str) -> dict[tuple[tuple[int, bytes, int], bytes, int], int]:
    """Slots as board.Slots.assign keys them (service, packed address, port)."""
    config = load_rules(rules)
    slots = {}
    for conf in config.services:
        svc = service_key(conf)
        slots[(svc, b"", 0)] = len(slots) + 1
        for d in conf.dests:
            slots[(svc, pack_addr(d.addr), d.port)] = len(slots) + 1
    return slots


def test_one_dnat_rule_per_nat_real_server_of_a_fast_service() -> None:
    config = load_rules(RULES)
    slots = slots_of(RULES)
    tcp = service_key(config.services[0])
    udp = service_key(config.services[1])
    rs2 = slots[(tcp, pack_addr("198.18.0.2"), 80)]
    rs3 = slots[(tcp, pack_addr("198.18.0.3"), 8080)]
    rs2u = slots[(udp, pack_addr("198.18.0.2"), 5353)]
    bits = f"{FAST_BITS:#x}"
    assert fast_dnat_rules(config, slots) == [
        f"-A DIRECTOR_FAST_DNAT -p tcp -m mark --mark {fast_mark(rs2):#x}/{bits} "
        "-j DNAT --to-destination 198.18.0.2:80",
        f"-A DIRECTOR_FAST_DNAT -p tcp -m mark --mark {fast_mark(rs3):#x}/{bits} "
        "-j DNAT --to-destination 198.18.0.3:8080",
        f"-A DIRECTOR_FAST_DNAT -p udp -m mark --mark {fast_mark(rs2u):#x}/{bits} "
        "-j DNAT --to-destination 198.18.0.2:5353",
    ]
    assert fast_dnat_rules(config, {}) == []


def test_the_counting_table_counts_each_nat_real_server_both_ways() -> None:
    """Made anew: the table, a map per direction from the connection's mark (under
    FAST_BITS) to a named counter, a rule per direction after mangle in PREROUTING
    and for replies in OUTPUT, then two counters per real server of a fast service."""
    config = load_rules(RULES)
    slots = slots_of(RULES)
    marks = {fast_mark(slot) for slot in fast_servers(config, slots)}
    assert len(marks) == 3
    script = acct_script(marks, None).splitlines()
    assert script[:3] == ["table ip director_acct {}", "delete table ip director_acct",
                          "table ip director_acct {"]  # fmt: skip
    bits = f"{FAST_BITS:#x}"
    assert f"    ct direction original counter name ct mark and {bits} map @in" in script
    assert f"    ct direction reply counter name ct mark and {bits} map @out" in script
    assert sum("hook prerouting priority -149" in line for line in script) == 1
    assert sum("hook output priority -149" in line for line in script) == 1
    for mark in marks:
        for direction in ("in", "out"):
            name = f"c_{mark:08x}_{direction}"
            assert f"add counter ip director_acct {name}" in script
            assert f'add element ip director_acct {direction} {{ {mark:#x} : "{name}" }}' in script


def test_the_counting_table_changes_only_the_counters_that_change() -> None:
    """Counters that stay go on counting: only the others are deleted and added."""
    script = acct_script({1, 3}, {1, 2}).splitlines()
    assert script == [
        "delete element ip director_acct in { 0x2 }",
        "delete counter ip director_acct c_00000002_in",
        "delete element ip director_acct out { 0x2 }",
        "delete counter ip director_acct c_00000002_out",
        "add counter ip director_acct c_00000003_in",
        'add element ip director_acct in { 0x3 : "c_00000003_in" }',
        "add counter ip director_acct c_00000003_out",
        'add element ip director_acct out { 0x3 : "c_00000003_out" }',
    ]
    assert acct_script({1}, {1}) == ""


def test_the_counters_are_read_from_nfts_json() -> None:
    """`nft -j list counters table ip director_acct` as nftables 1.0.6 prints it."""
    listing = json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"counter": {"family": "ip", "name": "c_4c000001_in", "table": "director_acct",
                     "handle": 3, "packets": 12, "bytes": 3456}},
        {"counter": {"family": "ip", "name": "c_4c000001_out", "table": "director_acct",
                     "handle": 4, "packets": 10, "bytes": 65432}},
        {"counter": {"family": "ip", "name": "c_4c000002_in", "table": "director_acct",
                     "handle": 5, "packets": 0, "bytes": 0}},
        {"counter": {"family": "ip", "name": "someone_elses", "packets": 9, "bytes": 9}},
    ]})  # fmt: skip
    assert parse_fast_counters(listing) == {0x4C000001: (12, 3456, 10, 65432),
                                            0x4C000002: (0, 0, 0, 0)}  # fmt: skip
    assert parse_fast_counters("") == parse_fast_counters("[1]") == {}


def test_a_real_server_without_a_port_takes_the_services() -> None:
    """A NAT real server of port 0 gets the packet's port, the service's (ip_vs_schedule,
    net/netfilter/ipvs/ip_vs_core.c: ip_vs_conn_new(..., dest->port ? dest->port : vport,
    ...), the port ip_vs_nat_xmit rewrites to)."""
    from director.model.config import Config, DestConf, ServiceConf

    svc = ServiceConf(protocol="tcp", addr="203.0.113.5", port=80,
                      dests=[DestConf(addr="198.18.0.2", port=0, method="masq")])  # fmt: skip
    key = (service_key(svc), pack_addr("198.18.0.2"), 0)
    (rule,) = fast_dnat_rules(Config(services=[svc]), {key: 9})
    assert rule.endswith("--to-destination 198.18.0.2:80")


def test_hooks_sets_by_mode() -> None:
    assert Hooks(queue=QUEUE, mark=MARK).sets == SETS | SETS6 | TUNNEL_SETS
    assert Hooks(queue=QUEUE, mark=MARK, fast=True).sets == SETS | SETS6 | TUNNEL_SETS | FAST_SETS
