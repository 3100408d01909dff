"""Dumping the connection table and loading it into a fresh director (a restart)."""

from __future__ import annotations

import json

from director.core.conn_dump import dump, load
from director.core.engine import Director
from director.core.xmit import SEND
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
