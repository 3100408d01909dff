"""ipvsadm lines -> ops, restore files (all or nothing), ipvsadm-save output, round trip."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.ctl.ipvsadm import format_save, load_rules, parse_line, parse_restore, restore
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
)
from director.model.config import Config, ConfigError, DestConf, ServiceConf, Timeouts

ROOT = Path(__file__).resolve().parents[2]
VIP = ("tcp", "203.0.113.5", 80)

LINES: list[tuple[str, Op]] = [
    ("-A -t 203.0.113.5:80 -s wlc", AddService(ServiceConf("tcp", "203.0.113.5", 80))),
    (
        "ipvsadm -A -t 203.0.113.5:80 -s rr -p",
        AddService(ServiceConf("tcp", "203.0.113.5", 80, scheduler="rr", persistent=360)),
    ),
    (
        "-A -f 1 -s rr -p 360",
        AddService(ServiceConf("fwm", fwmark=1, scheduler="rr", persistent=360)),
    ),
    (
        "-A -u 203.0.113.5:53 -s rr -p 60 -M 255.255.255.0 -o",
        AddService(
            ServiceConf(
                "udp",
                "203.0.113.5",
                53,
                scheduler="rr",
                persistent=60,
                netmask="255.255.255.0",
                ops=True,
            )
        ),
    ),
    (
        "--add-service --tcp-service=203.0.113.5:80 --scheduler wrr --persistent 30",
        AddService(ServiceConf("tcp", "203.0.113.5", 80, scheduler="wrr", persistent=30)),
    ),
    (
        "-E -t 203.0.113.5:80 -s lc",
        EditService(ServiceConf("tcp", "203.0.113.5", 80, scheduler="lc")),
    ),
    ("-D -t 203.0.113.5:80", DeleteService(VIP)),
    (
        "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1",
        AddServer(VIP, DestConf("198.18.0.2", 80, "masq", 1)),
    ),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2", AddServer(VIP, DestConf("198.18.0.2", 80))),
    (
        "-a -t 203.0.113.5:80 -r 198.18.0.2 -i -w 0 --tun-type ipip -x 10 -y 2",
        AddServer(VIP, DestConf("198.18.0.2", 80, "tunnel", 0, 10, 2)),
    ),
    (
        "-a -u [2001:db8:1::100]:53 -r [2001:db8:2::5]:5353 -m",
        AddServer(("udp", "2001:db8:1::100", 53), DestConf("2001:db8:2::5", 5353, "masq")),
    ),
    ("-e -t 203.0.113.5:80 -r 198.18.0.2:80 -w 3", EditServer(VIP, "198.18.0.2", 80, weight=3)),
    ("-d -t 203.0.113.5:80 -r 198.18.0.2", DeleteServer(VIP, "198.18.0.2", 80)),
    ("-C", Clear()),
    ("--set 900 120 300", SetTimeout(900, 120, 300)),
]


@pytest.mark.parametrize(("line", "op"), LINES, ids=[line for line, _ in LINES])
def test_parse_line(line: str, op: Op) -> None:
    assert parse_line(line) == op


BAD_LINES: list[tuple[str, str]] = [
    ("-A -t 203.0.113.5:80 -w 3", "Illegal 'weight' option with the 'add-service' command"),
    ("-a -t 203.0.113.5:80", "You need to supply the 'real-server' option for the 'add-server'"),
    ("-A -s rr", "You need to supply the 'service-address' option"),
    ("-A -t 203.0.113.5:80 -u 203.0.113.5:80", "multiple 'service-address' options specified"),
    ("-A -D -t 203.0.113.5:80", "multiple commands specified"),
    ("-A -t 203.0.113.5:80 -Q", "invalid option `-Q'"),
    ("-A -t 203.0.113.5:80 extra", "unexpected argument extra"),
    ("-A -t 203.0.113.5", "Zero port specified for non-persistent service"),
    ("-A -t 80", "illegal virtual server address[:port] specified"),
    ("-A -t www.example.com:80", "illegal virtual server address[:port] specified"),
    ("-A -f 0", "invalid fwmark value `0' specified"),
    ("-A -t 203.0.113.5:80 -p 0", "invalid timeout value `0' specified"),
    ("-A -t 203.0.113.5:80 -s nope", "Scheduler or persistence engine not found"),
    ("-A -t 203.0.113.5:80 -b flag-9", "invalid scheduler flag `flag-9'"),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2 -w x", "illegal weight specified"),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2 -x -1", "illegal u_threshold specified"),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2 -m -g", "multiple 'forwarding-method' options specified"),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2 -m --tun-type ipip", "Tunnel options conflict"),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2 -i --tun-type gue", "You need to supply the 'tun-port'"),
    ("--set 1 2", "--set option requires 3 timeout values"),
    ("-L -n", "invalid option `-L'"),
    ("-t 203.0.113.5:80", "no command given"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[line for line, _ in BAD_LINES])
def test_bad_lines(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_line(line)


SEED_SAVE = """\
-A -t 203.0.113.5:21 -s rr
-a -t 203.0.113.5:21 -r 198.18.0.3:21 -m -w 1
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1
-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m -w 1
"""


def test_restore_real_ipvsadm_save_output() -> None:
    text = "# saved by ipvsadm-save -n\n\n" + SEED_SAVE
    config = load_rules(text)
    assert [s.port for s in config.services] == [21, 80]
    assert format_save(config) == SEED_SAVE


def test_seed_rules_file_parses() -> None:
    config = load_rules((ROOT / "rules" / "seed-nat.rules").read_text())
    web = {s.port: s for s in config.services}[80]
    assert [(d.addr, d.port, d.method) for d in web.dests] == [
        ("198.18.0.2", 80, "masq"),
        ("198.18.0.3", 8000, "masq"),
    ]
    assert {s.port: s for s in config.services}[21].dests[0].key == ("198.18.0.3", 21)


def test_save_format_matches_ipvsadm() -> None:
    config = load_rules(
        "--set 600 120 300\n"
        "-A -f 1 -s rr -p 360 -M 255.255.255.0\n"
        "-a -f 1 -r 198.18.0.4:0 -i -w 2 -x 10 -y 5\n"
        "-A -u [2001:db8:1::100]:53 -s wlc -p 60 -M 64 -o\n"
        "-a -u [2001:db8:1::100]:53 -r [2001:db8:2::5]:53 -g -w 1\n"
        "-A -t 203.0.113.7:443 -s wrr -b flag-1\n"
    )
    assert format_save(config) == (
        "--set 600 120 300\n"
        "-A -f 1 -s rr -p 360 -M 255.255.255.0\n"
        "-a -f 1 -r 198.18.0.4:0 -i -w 2 --tun-type ipip -x 10 -y 5\n"
        "-A -u [2001:db8:1::100]:53 -s wlc -p 60 -M 64 -o\n"
        "-a -u [2001:db8:1::100]:53 -r [2001:db8:2::5]:53 -g -w 1\n"
        "-A -t 203.0.113.7:443 -s wrr -b flag-1\n"
    )


def test_empty_config_saves_nothing() -> None:
    assert format_save(Config()) == ""


def test_restore_names_bad_parse_line_and_applies_nothing() -> None:
    text = SEED_SAVE + "\n-a -t 203.0.113.5:80 -r 198.18.0.9 -w lots\n"
    with pytest.raises(ConfigError, match=r"^line 7: illegal weight specified$"):
        restore(Config(), text)


def test_restore_names_line_that_fails_to_apply() -> None:
    current = load_rules(SEED_SAVE)
    with pytest.raises(ConfigError, match=r"^line 2: Service already exists$"):
        restore(current, "-A -t 203.0.113.9:80 -s rr\n-A -t 203.0.113.5:80 -s rr\n")


def test_restore_adds_to_current_table() -> None:
    current = load_rules(SEED_SAVE)
    new = restore(current, "-A -t 203.0.113.9:80 -s rr\n")
    assert len(new.services) == 3 and new.services[:2] == current.services


def test_parse_restore_skips_comments_and_blanks() -> None:
    assert parse_restore("# x\n\n   \n-C\n  # y\n") == [Clear()]


# --- round trip over generated configurations ---------------------------------------

schedulers = st.sampled_from(["rr", "wrr", "lc", "wlc"])
ports = st.integers(1, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
weights = st.integers(0, 2147483647)


@st.composite
def dests(draw: st.DrawFn, family: int) -> DestConf:
    method = draw(st.sampled_from(["masq", "droute", "tunnel"]))
    addr = draw(v6 if family == 6 else v4)
    upper = draw(st.integers(0, 1000))
    lower = draw(st.integers(0, upper)) if upper else 0
    return DestConf(addr, draw(st.integers(0, 65535)), method, draw(weights), upper, lower)


@st.composite
def services(draw: st.DrawFn) -> ServiceConf:
    protocol = draw(st.sampled_from(["tcp", "udp", "fwm"]))
    persistent = draw(st.none() | st.integers(1, 86400 * 31))
    family = 4 if protocol == "fwm" else draw(st.sampled_from([4, 6]))
    if family == 6:
        netmask = str(draw(st.integers(1, 128)))
    else:
        netmask = str(ipaddress.IPv4Network(f"0.0.0.0/{draw(st.integers(0, 32))}").netmask)
    svc = ServiceConf(
        protocol=protocol,
        addr="" if protocol == "fwm" else draw(v6 if family == 6 else v4),
        port=0 if protocol == "fwm" else draw(st.integers(0 if persistent else 1, 65535)),
        fwmark=draw(st.integers(1, 2**32 - 1)) if protocol == "fwm" else 0,
        scheduler=draw(schedulers),
        persistent=persistent,
        netmask=netmask,
        sched_flags=tuple(draw(st.sets(st.sampled_from(["flag-1", "flag-2", "flag-3"])))),
        ops=protocol != "tcp" and draw(st.booleans()),
    )
    servers = tuple(draw(st.lists(dests(family), max_size=4)))
    return dataclasses.replace(svc, dests=servers)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    config = Config()
    for svc in draw(st.lists(services(), max_size=4)):
        try:
            config = apply(config, AddService(svc))
        except ConfigError:
            continue  # a duplicate key
        for dest in svc.dests:
            try:
                config = apply(config, AddServer(svc.key, dest))
            except ConfigError:
                continue  # a duplicate real server
    timeouts = draw(st.tuples(*[st.integers(1, 86400 * 31)] * 3))
    return Config(config.services, Timeouts(*timeouts))


@settings(max_examples=200, deadline=None)
@given(configs())
def test_save_restore_round_trip(config: Config) -> None:
    assert load_rules(format_save(config)) == config
