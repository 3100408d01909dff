"""The FTP helper's daemon setting (ip_vs_ftp's module parameter ``ports``, default
{21}: net/netfilter/ipvs/ip_vs_ftp.c ``static unsigned short ports[IP_VS_APP_MAX_PORTS]
= {21, 0}``) and what it makes the hooks select."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.core.sysctl import Sysctls
from director.model.config import Config, ConfigError, DestConf, ServiceConf
from director.shell.daemon import parse_settings
from director.shell.netfilter import RS_ANY_SET, RS_SET, selection
from director.shell.peer import build_director


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "director.toml"
    path.write_text(text)
    return path


def test_default_is_port_21_and_the_toml_and_the_command_line_set_it(tmp_path: Path) -> None:
    assert parse_settings(["--config", str(write(tmp_path, ""))]).ftp_ports == "21"
    settings = parse_settings(["--config", str(write(tmp_path, 'ftp_ports = "21,2121"\n'))])
    assert settings.ftp_ports == "21,2121"
    settings = parse_settings(["--config", str(write(tmp_path, "")), "--ftp-ports", ""])
    assert settings.ftp_ports == ""


@pytest.mark.parametrize("value", ["0", "65536", "x", "1,2,3,4,5,6,7,8,9"])
def test_bad_ports_are_refused(tmp_path: Path, value: str) -> None:
    """Ports 1-65535, at most IP_VS_APP_MAX_PORTS (8) of them."""
    with pytest.raises(ConfigError, match="ftp_ports"):
        parse_settings(["--config", str(write(tmp_path, "")), "--ftp-ports", value])


def test_the_director_binds_the_helper_on_its_ports() -> None:
    director = build_director({}, Sysctls(), 0, (21, 2121))
    assert director.apps.ports("ftp") == (21, 2121)
    assert build_director({}, Sysctls(), 0).apps.ports("ftp") == ()


def test_a_helper_ports_nat_real_servers_are_queued_on_every_port() -> None:
    """The data connections leave the real server from other ports than 21 (its
    passive ports, 20): their replies must reach the worker (ip_vs_out sees every
    forwarded packet), so the RIP goes in director-rs-any; other services keep
    director-rs by port."""
    config = Config(services=(
        ServiceConf("tcp", "203.0.113.5", 21, dests=(DestConf("198.18.0.2", 21, "masq"),)),
        ServiceConf("tcp", "203.0.113.5", 80, dests=(DestConf("198.18.0.3", 80, "masq"),)),
    ))  # fmt: skip
    wanted, _ = selection(config, app_ports=frozenset((21,)))
    assert wanted[RS_ANY_SET] == {("198.18.0.2", 0, 0)}
    assert ("198.18.0.3", 6, 80) in wanted[RS_SET]
    wanted, _ = selection(config)
    assert wanted[RS_ANY_SET] == set()


def test_what_the_helper_left_alone_is_a_metric() -> None:
    """A 227 cut by the end of its segment (ip_vs_ftp_get_addrport's partial match, -1)
    is counted and exported as director_app_events{event="ftp_partial"}, summed over
    the workers' reports."""
    from prometheus_client.core import CounterMetricFamily

    from director.shell.metrics import DirectorCollector, add_reports, take_sample
    from tests.core.test_app_ftp import director, established, pasv

    d = director()
    established(d)
    pasv(d, b"227 Entering Passive Mode (198,18,0,2,1")
    sample = add_reports(take_sample(d, {}), [{"app_events": {"ftp_partial": 2},
                                               **_empty_report()}])  # fmt: skip
    collector = DirectorCollector()
    collector.publish(sample)
    family = next(f for f in collector.collect() if f.name == "director_app_events")
    assert isinstance(family, CounterMetricFamily)
    assert [(s.labels, s.value) for s in family.samples if s.name.endswith("_total")] == [
        ({"event": "ftp_partial"}, 3)
    ]


def _empty_report() -> dict[str, object]:
    return {"conn_entries": 0, "verdicts": {}, "drops": {}, "passes": {}, "defenses": {},
            "drop_rate": 0, "conn_limit": 0, "worker_errors": {}, "loop_errors": {},
            "queues": ()}  # fmt: skip
