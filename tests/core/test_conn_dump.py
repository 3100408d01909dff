"""Dumping the connection table and loading it into a fresh director (a restart)."""

from __future__ import annotations

import ipaddress
import json

from director.core.conn import Conn
from director.core.conn_dump import dump, load
from director.core.engine import Director
from director.core.packet import Packet
from director.core.persist import new_template, template_key
from director.core.route import Route
from director.core.service import Service
from director.core.xmit import SEND, bind_xmit
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, RS1, RS2, SYN, VIP, tcp, udp

CONFIG = Config(
    services=(
        ServiceConf("tcp", VIP, 80, scheduler="rr",
                    dests=(DestConf(RS1, 80, "masq"), DestConf(RS2, 8000, "masq"))),
        ServiceConf("udp", VIP, 53, scheduler="rr", persistent=60,
                    dests=(DestConf(RS1, 53, "masq"),)),
    )
)  # fmt: skip


def fresh() -> Director:
    d = Director()
    d.configure(CONFIG)
    return d


def counters(d: Director) -> list[tuple[int, int, int]]:
    return [(x.activeconns, x.inactconns, x.persistconns) for s in d.services for x in s.dests]


def test_a_restart_keeps_every_connection_where_it_was():
    old = fresh()
    old.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    old.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.1)  # ESTABLISHED
    old.hook_in(tcp(CLIENT, VIP, 40001, 80, SYN), 0.2)  # SYN_RECV
    old.hook_in(udp(CLIENT, VIP, 5000, 53), 0.3)  # with a persistence template
    data = json.loads(json.dumps(dump(old, 10.0)))  # as written to and read from disk

    new = fresh()
    assert load(new, data, 500.0) == (4, 0)
    assert counters(new) == counters(old)
    states = sorted((c.cport, c.state_name, round(c.expires - 500.0, 1)) for c in new.conns)
    assert states == [
        (5000, "UDP", 290.3),
        (40000, "ESTABLISHED", 890.1),
        (40001, "SYN_RECV", 50.2),
    ]
    (template,) = new.conns.templates.values()
    assert template.n_control == 1
    # Packets of a restored connection go where they went before.
    for director in (old, new):
        action, data_out = director.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK, b"more"), 501.0)
        assert action == SEND
    assert bytes(data_out[16:20]) == bytes(old.conns.in_tab[next(iter(old.conns.in_tab))].daddr)


def test_entries_of_services_gone_are_left_out():
    old = fresh()
    old.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    new = Director()
    new.configure(Config(services=(CONFIG.services[1],)))
    assert load(new, dump(old, 1.0), 1.0) == (0, 1)
    assert len(new.conns) == 0


def test_an_answered_udp_template_is_assured_across_a_restart():
    """udp_state_transition: a reply (IP_VS_DIR_OUTPUT) assures the connection's template
    (ip_vs_control_assure_ct), which ip_vs_state_name shows as ASSURED; the dump keeps
    the template's state."""
    old = fresh()
    old.hook_in(udp(CLIENT, VIP, 5000, 53), 0.0)
    (template,) = old.conns.templates.values()
    assert template.state_name == "NONE"
    old.hook_out(udp(RS1, CLIENT, 53, 5000), 0.1)
    assert template.state_name == "ASSURED"
    new = fresh()
    load(new, json.loads(json.dumps(dump(old, 1.0))), 1.0)
    assert [t.state_name for t in new.conns.templates.values()] == ["ASSURED"]


# -- IPv6 entries ----------------------------------------------------------------------

CLIENT6, VIP6 = "2001:db8:1::10", "2001:db8:1::100"
CONFIG6 = Config(
    services=(
        ServiceConf("tcp", VIP6, 80, scheduler="rr", persistent=300, netmask="64",
                    dests=(DestConf("2001:db8:2::2", 80, "masq"),
                           DestConf("2001:db8:2::3", 8000, "masq"))),
        ServiceConf("fwm", "::", fwmark=7, scheduler="rr", persistent=60, netmask="128",
                    dests=(DestConf("2001:db8:2::4", 0, "droute"),)),
        ServiceConf("tcp", VIP, 8080, scheduler="rr",
                    dests=(DestConf("2001:db8:3::2", 8080, "tunnel"),)),
    )
)  # fmt: skip


def fresh6() -> Director:
    d = Director()
    d.configure(CONFIG6)
    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=3, source=bytes(len(dest.addr)), mtu=1500)
    return d


def _through_template(d: Director, svc: Service, client: str, cport: int, state: int) -> Conn:
    """A connection made as ip_vs_sched_persist makes it: its template first."""
    caddr = ipaddress.IPv6Address(client).packed
    vaddr = ipaddress.IPv6Address(VIP6).packed
    pkt = Packet(bytearray(60), 6, caddr, vaddr, cport, 80, 40, 60)
    key = template_key(svc, pkt)
    template = d.conns.templates.get(key)
    if template is None:
        dest = svc.dests[0]
        template = new_template(d.tcp, key, svc, dest, bind_xmit(dest), 0.0)
        d.conns.add(template)
    dest = template.dest
    conn = Conn(d.tcp, 6, caddr, cport, vaddr, 80, svc, dest, bind_xmit(dest))
    d.conns.add(conn, template)
    conn.state, conn.timeout, conn.expires = state, 900, 900.0
    return conn


def _entries(d: Director) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for conn in [*d.conns.templates.values(), *d.conns.all()]:
        control = None if conn.control is None else conn.control.in_key
        out.append((conn.template, conn.in_key, conn.daddr, conn.dport, conn.state, control))
    return sorted(out, key=repr)


def test_a_restart_keeps_ipv6_and_mixed_family_entries():
    """IPv6 connections and their -M 64 template, an IPv6 firewall-mark template
    (vaddr: the mark then 12 zero bytes) and an IPv4 client tunnelled to an IPv6 real
    server, through the dump as the daemon writes it to disk and reads it back."""
    old = fresh6()
    svc6, fwm, mixed = old.services
    _through_template(old, svc6, CLIENT6, 40000, 1)  # ESTABLISHED
    _through_template(old, svc6, "2001:db8:1::aa", 40001, 3)  # SYN_RECV, the same /64
    mark = bytes([0, 0, 0, 7]) + bytes(12)
    ftemplate = new_template(old.tcp, (0, ipaddress.IPv6Address(CLIENT6).packed, 0, mark, 0),
                             fwm, fwm.dests[0], bind_xmit(fwm.dests[0]), 0.0)  # fmt: skip
    old.conns.add(ftemplate)
    assert old.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 0.0)[0] == SEND
    assert len(old.conns.templates) == 2 and len(old.conns) == 3
    data = json.loads(json.dumps(dump(old, 10.0)))

    new = fresh6()
    assert load(new, data, 20.0) == (5, 0)
    assert _entries(new) == _entries(old)
    (template,) = [t for t in new.conns.templates.values() if t.protocol == 6]
    assert template.n_control == 2
    assert template.caddr == ipaddress.IPv6Address("2001:db8:1::").packed
    counts = {d.describe(): (d.activeconns, d.inactconns, d.persistconns)
              for d in new.services.services[svc6.key].dests}  # fmt: skip
    # ESTABLISHED and SYN_RECV are active states (tcp_state_active_table).
    assert counts == {"2001:db8:2::3:8000": (2, 0, 1), "2001:db8:2::2:80": (0, 0, 0)}
    (tunnelled,) = [c for c in new.conns if c.svc.key == mixed.key]
    assert tunnelled.daddr == ipaddress.IPv6Address("2001:db8:3::2").packed
