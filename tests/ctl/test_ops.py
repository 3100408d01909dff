"""ops.apply: ipvsadm/kernel validation, one bad input per row, config unchanged."""

from __future__ import annotations

import re

import pytest

from director.ctl.ops import (
    AddServer,
    AddService,
    Clear,
    DeleteServer,
    DeleteService,
    EditServer,
    EditService,
    Op,
    SetTimeout,
    apply,
    apply_all,
)
from director.model.config import Config, ConfigError, DestConf, ServiceConf, Timeouts

VIP = ("tcp", "203.0.113.5", 80)
TCP80 = ServiceConf("tcp", "203.0.113.5", 80, scheduler="rr")
FWM = ServiceConf("fwm", fwmark=7, persistent=360)
NAT2 = DestConf("198.18.0.2", 80, "masq")
NAT3 = DestConf("198.18.0.3", 8000, "masq")


@pytest.fixture
def base() -> Config:
    return apply_all(
        Config(),
        [AddService(TCP80), AddServer(VIP, NAT2), AddServer(VIP, NAT3), AddService(FWM)],
    )


def test_add_service_and_servers_keep_order(base: Config) -> None:
    svc = base.services[0]
    assert svc.key == VIP
    assert [d.key for d in svc.dests] == [("198.18.0.2", 80), ("198.18.0.3", 8000)]


def test_edit_service_keeps_dests_and_replaces_settings(base: Config) -> None:
    edited = apply(base, EditService(ServiceConf("tcp", "203.0.113.5", 80, persistent=60)))
    svc = edited.services[0]
    assert (svc.scheduler, svc.persistent) == ("wlc", 60)
    assert svc.dests == base.services[0].dests


def test_edit_server_keeps_position_and_unspecified_fields(base: Config) -> None:
    edited = apply(base, EditServer(VIP, "198.18.0.2", 80, weight=5))
    assert edited.services[0].dests[0] == DestConf("198.18.0.2", 80, "masq", weight=5)
    assert edited.services[0].dests[1] == NAT3


def test_dr_server_takes_service_port(base: Config) -> None:
    new = apply(base, AddServer(VIP, DestConf("198.18.0.9", 8080, "droute")))
    assert new.services[0].dests[-1].port == 80


def test_addresses_are_canonical() -> None:
    config = apply(Config(), AddService(ServiceConf("udp", "2001:DB8:1:0::100", 53)))
    assert config.services[0].addr == "2001:db8:1::100"
    assert config.services[0].netmask == "128"


def test_delete_and_clear(base: Config) -> None:
    config = apply(base, DeleteServer(VIP, "198.18.0.2", 80))
    assert [d.addr for d in config.services[0].dests] == ["198.18.0.3"]
    config = apply(config, DeleteService(VIP))
    assert [s.key for s in config.services] == [("fwm", "", 7)]
    assert apply(config, Clear()).services == ()


def test_set_timeout_zero_keeps_value() -> None:
    config = apply(Config(), SetTimeout(0, 60, 0))
    assert config.timeouts == Timeouts(tcp=900, tcpfin=60, udp=300)


def test_sched_flags_normalised_to_ipvsadm_names() -> None:
    svc = ServiceConf("tcp", "203.0.113.5", 80, scheduler="rr", sched_flags=("flag-2", "flag-1"))
    assert apply(Config(), AddService(svc)).services[0].sched_flags == ("flag-1", "flag-2")


BAD: list[tuple[str, Op, str]] = [
    ("duplicate service", AddService(TCP80), "Service already exists"),
    (
        "unknown scheduler",
        AddService(ServiceConf("tcp", "203.0.113.6", 80, scheduler="xx")),
        "Scheduler or persistence engine not found",
    ),
    (
        "port zero, not persistent",
        AddService(ServiceConf("tcp", "203.0.113.6", 0)),
        "Zero port specified for non-persistent service",
    ),
    ("port too big", AddService(ServiceConf("tcp", "203.0.113.6", 65536)), "address[:port]"),
    ("bad address", AddService(ServiceConf("tcp", "203.0.113.256", 80)), "invalid"),
    ("fwmark zero", AddService(ServiceConf("fwm", fwmark=0)), "invalid fwmark value"),
    (
        "ops on tcp",
        AddService(ServiceConf("tcp", "203.0.113.6", 80, ops=True)),
        "One-Packet Scheduling is only for UDP virtual services",
    ),
    (
        "bad netmask",
        AddService(ServiceConf("tcp", "203.0.113.6", 80, persistent=9, netmask="255.0.255.0")),
        "persistent mask",
    ),
    (
        "bad v6 netmask",
        AddService(ServiceConf("tcp", "2001:db8::1", 80, persistent=9, netmask="129")),
        "ipv6 netmask",
    ),
    (
        "persistence too long",
        AddService(ServiceConf("tcp", "203.0.113.6", 80, persistent=86400 * 31 + 1)),
        "timeout value",
    ),
    (
        "bad sched flag",
        AddService(ServiceConf("tcp", "203.0.113.6", 80, sched_flags=("x",))),
        "invalid scheduler flag",
    ),
    (
        "sh flag with rr",
        AddService(ServiceConf("tcp", "203.0.113.6", 80, scheduler="rr", sched_flags=("sh-port",))),
        "incompatible scheduler flag",
    ),
    ("edit missing service", EditService(ServiceConf("tcp", "203.0.113.6", 80)), "No such service"),
    ("delete missing service", DeleteService(("udp", "203.0.113.5", 80)), "No such service"),
    (
        "server of missing service",
        AddServer(("tcp", "203.0.113.6", 80), NAT2),
        "Service not defined",
    ),
    ("duplicate server", AddServer(VIP, NAT2), "Destination already exists"),
    (
        "negative weight",
        AddServer(VIP, DestConf("198.18.0.9", 80, "masq", weight=-1)),
        "illegal weight",
    ),
    (
        "weight too big",
        AddServer(VIP, DestConf("198.18.0.9", 80, "masq", weight=2**31)),
        "illegal weight",
    ),
    (
        "negative threshold",
        AddServer(VIP, DestConf("198.18.0.9", 80, u_threshold=-1)),
        "illegal u_threshold",
    ),
    (
        "lower above upper",
        AddServer(VIP, DestConf("198.18.0.9", 80, u_threshold=5, l_threshold=6)),
        "lower threshold is higher than upper threshold",
    ),
    ("unknown method", AddServer(VIP, DestConf("198.18.0.9", 80, "local")), "forwarding method"),
    (
        "family mix without tunnel",
        AddServer(VIP, DestConf("2001:db8:2::9", 80, "masq")),
        "Different address family",
    ),
    ("edit missing server", EditServer(VIP, "198.18.0.9", 80, weight=2), "No such destination"),
    ("edit to a bad weight", EditServer(VIP, "198.18.0.2", 80, weight=-5), "illegal weight"),
    ("delete missing server", DeleteServer(VIP, "198.18.0.9", 80), "No such destination"),
    ("timeout too long", SetTimeout(86400 * 32, 0, 0), "invalid timeout value"),
    ("negative timeout", SetTimeout(0, -1, 0), "invalid timeout value"),
]


@pytest.mark.parametrize(("why", "op", "message"), BAD, ids=[row[0] for row in BAD])
def test_bad_ops_raise_and_change_nothing(base: Config, why: str, op: Op, message: str) -> None:
    before = base
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        apply(base, op)
    assert "\n" not in str(info.value)
    assert base == before
