"""keepalived.conf import: the parser on configurations in the shapes of keepalived's
documentation and its users' files, the translation, and malformed files."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.ctl import keepalived
from director.model.config import ConfigError

HERE = Path(__file__).parent / "keepalived"


def translate(name: str) -> keepalived.Translation:
    return keepalived.translate(keepalived.parse_file(HERE / name))


def test_nat_http_sample() -> None:
    result = translate("nat-http.conf")
    assert [argv[0] for _, argv in result.commands] == [
        "add-service", "set-health", "add-server", "add-check", "add-server", "add-check",
    ]  # fmt: skip
    assert result.commands[0][1] == ["add-service", "-t", "203.0.113.5:80", "-s", "rr", "-p", "50"]
    assert result.untranslated == [f"{HERE / 'nat-http.conf'}:37: a second url (one is checked)"]
    assert len(result.ignored) == 2  # global_defs, vrrp_instance
    config = keepalived.build_config(result)
    (svc,) = config.services
    assert [(d.addr, d.port, d.method, d.weight) for d in svc.dests] == [
        ("198.18.0.2", 80, "masq", 1), ("198.18.0.3", 8000, "masq", 2),
    ]  # fmt: skip
    http, tcp = config.health.checks
    assert (http.kind, http.path, http.interval, http.retry, http.on_failure) == (
        "http", "/testurl/test.jsp", 6.0, 3, "quiesce",
    )  # fmt: skip
    assert http.digest == "640205b7b0fc66c1ea91c463fac6334d"
    assert (tcp.kind, tcp.port, tcp.on_failure) == ("tcp", 8000, "remove")
    assert config.health.policies[0].sorry == ("198.18.0.9", 80)


def test_include_fwmark_misc_quorum_and_ssl() -> None:
    result = translate("dr-fwmark.conf")
    assert result.untranslated == []
    config = keepalived.build_config(result)
    https, fwm = config.services
    assert https.key == ("tcp", "203.0.113.6", 443) and https.dests[0].method == "droute"
    assert fwm.key == ("fwm", "", 7) and fwm.netmask == "255.255.255.0"
    ssl_check, misc = config.health.checks
    assert ssl_check.kind == "https" and ssl_check.status == (200, 204)
    assert ssl_check.host == "www.example.org" and ssl_check.retry == 2
    assert misc.command == "/usr/local/bin/check-rs 198.18.0.2" and misc.timeout == 5
    policy = config.health.policies[0]
    assert (policy.quorum, policy.hysteresis) == (2, 1)
    assert policy.quorum_up == "/usr/local/bin/announce up"
    dry = keepalived.as_commands(result)
    assert "dirctl add-check -f 7 -r 198.18.0.2:0" in dry
    assert "--quorum-up '/usr/local/bin/announce up'" in dry


def test_untranslatable_settings_listed(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(
        "virtual_server 203.0.113.5 80 {\n"
        "  lb_algo rr\n  protocol SCTP\n}\n"
        "virtual_server group web {\n  lb_algo rr\n}\n"
        "virtual_server 203.0.113.7 80 { lb_algo rr\n"
        "  real_server 198.18.0.2 80 {\n    notify_up /bin/true\n"
        "    TCP_CHECK {\n bindto 198.18.0.1\n }\n    SMTP_CHECK {\n }\n  }\n}\n"
    )
    result = keepalived.translate(keepalived.parse_file(conf))
    reasons = [item.split(": ", 1)[1] for item in result.untranslated]
    assert reasons == [
        "protocol SCTP", "virtual_server group web", "notify_up", "SMTP_CHECK",
        "TCP_CHECK bindto",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("virtual_server 203.0.113.5 80 {\n  lb_algo rr\n", 1, "'}' missing"),
        ("}\n", 1, "'}' without a block"),
        ("virtual_server 203.0.113.5 80 {\n  lb_kind FOO\n}\n", 2, "NAT, DR or TUN"),
        ('virtual_server 203.0.113.5 80 {\n  quorum_up "x\n}\n', 2, "unterminated"),
        ("include nothing-here.conf\n", 1, "no such file"),
        ("virtual_server 203.0.113.5 80 {\n delay_loop soon\n}\n", 2, "not a number"),
        (
            "virtual_server 203.0.113.5 80 {\n real_server 198.18.0.2 80 {\n"
            "  HTTP_GET {\n   connect_timeout 3\n  }\n }\n}\n",
            3,
            "without a url",
        ),
    ],
)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        keepalived.translate(keepalived.parse_file(conf))
    assert str(err.value).startswith(f"{conf}:{line}: ") and reason in str(err.value)


def test_bad_values_name_the_keepalived_line(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(
        "virtual_server 203.0.113.5 80 {\n  lb_algo nosuch\n"
        "  real_server 198.18.0.2 80 {\n    weight -3\n  }\n}\n"
    )
    result = keepalived.translate(keepalived.parse_file(conf))
    assert result.untranslated == [f"{conf}:2: lb_algo nosuch"]
    with pytest.raises(ConfigError, match=rf"^{conf}:1: "):
        keepalived.build_config(result)


# --- global_defs: lvs_sync_daemon and lvs_timeouts (keepalived.conf(5)) ----------------

VRRP = "vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n}\n"


def translate_text(tmp_path: Path, text: str) -> keepalived.Translation:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    return keepalived.translate(keepalived.parse_file(conf))


def test_lvs_sync_daemon_starts_the_backup_with_the_instances_vrid(tmp_path: Path) -> None:
    """ "syncid (0 to 255) for lvs syncd, default is the VRID of vrrp instance": 51;
    with an instance, only the backup daemon until that instance is MASTER."""
    result = translate_text(tmp_path, "global_defs {\n  lvs_sync_daemon eth1 VI_1\n}\n" + VRRP)
    assert keepalived.as_commands(result) == (
        "dirctl start-daemon backup --mcast-interface eth1 --syncid 51\n"
    )
    ((where, conf),) = result.sync_daemons
    assert where.endswith(":2") and (conf.state, conf.mcast_ifn, conf.syncid) == (
        "backup", "eth1", 51,
    )  # fmt: skip


def test_lvs_sync_daemon_with_every_option(tmp_path: Path) -> None:
    text = ("global_defs {\n  lvs_sync_daemon eth1 inst VI_1 id 7 maxlen 1400 port 8850 "
            "ttl 2 group 224.0.0.82\n}\n" + VRRP)  # fmt: skip
    result = translate_text(tmp_path, text)
    assert keepalived.as_commands(result) == (
        "dirctl start-daemon backup --mcast-interface eth1 --syncid 7 --sync-maxlen 1400 "
        "--mcast-group 224.0.0.82 --mcast-port 8850 --mcast-ttl 2\n"
    )


def test_lvs_sync_daemon_without_an_instance_runs_master_and_backup(tmp_path: Path) -> None:
    """ "If VRRP_INSTANCE is not specified, both the master and backup sync daemons
    will be run as long as keepalived is running" (syncid 0 then)."""
    result = translate_text(tmp_path, "global_defs {\n  lvs_sync_daemon eth1\n}\n")
    assert keepalived.as_commands(result) == (
        "dirctl start-daemon master --mcast-interface eth1 --syncid 0\n"
        "dirctl start-daemon backup --mcast-interface eth1 --syncid 0\n"
    )


def test_lvs_timeouts_go_into_the_rules(tmp_path: Path) -> None:
    """lvs_timeouts: ipvsadm --set's three values, 0 (unchanged) for those not given;
    the rules file carries them as its --set line."""
    result = translate_text(
        tmp_path,
        "global_defs {\n  lvs_timeouts tcp 7200 udp 60\n}\n"
        "virtual_server 203.0.113.5 80 {\n  lb_algo rr\n}\n",
    )
    assert keepalived.as_commands(result).splitlines() == [
        "dirctl set-timeout 7200 0 60",
        "dirctl add-service -t 203.0.113.5:80 -s rr",
    ]
    config = keepalived.build_config(result)
    assert (config.timeouts.tcp, config.timeouts.udp) == (7200, 60)
    assert keepalived.as_rules(result).startswith("--set 7200 ")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("lvs_sync_daemon", "needs an interface"),
        ("lvs_sync_daemon eth1 VI_2", "no vrrp_instance VI_2"),
        ("lvs_sync_daemon eth1 VI_1 id 256", "id must be 0 to 255"),
        ("lvs_sync_daemon eth1 VI_1 maxlen 0", "maxlen must be 1 to 65507"),
        ("lvs_sync_daemon eth1 VI_1 port x", "port must be 1 to 65535"),
        ("lvs_sync_daemon eth1 VI_1 ttl", "ttl needs a value"),
        ("lvs_sync_daemon eth1 VI_1 group 198.18.0.9", "not a multicast address"),
        ("lvs_sync_daemon eth1 VI_1 bogus 3", "unexpected 'bogus'"),
        ("lvs_sync_daemon eth1/x VI_1", "invalid interface name"),
        ("lvs_timeouts", "takes pairs"),
        ("lvs_timeouts tcp", "takes pairs"),
        ("lvs_timeouts tcp soon", "not a number"),
        ("lvs_timeouts tcp 1 tcp 2", "unexpected 'tcp'"),
        ("lvs_timeouts sctp 5", "unexpected 'sctp'"),
    ],
)
def test_bad_sync_and_timeout_settings_name_file_and_line(
    tmp_path: Path, line: str, reason: str
) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(f"global_defs {{\n  router_id d1\n  {line}\n}}\n" + VRRP)
    with pytest.raises(ConfigError) as err:
        keepalived.translate(keepalived.parse_file(conf))
    assert str(err.value).startswith(f"{conf}:3: ") and reason in str(err.value), err.value


def test_a_timeout_out_of_ipvsadms_range_names_the_line(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n  lvs_timeouts udp 99999999999\n}\n")
    result = keepalived.translate(keepalived.parse_file(conf))
    with pytest.raises(ConfigError, match=rf"^{conf}:2: "):
        keepalived.build_config(result)


def test_dirctl_dry_run_prints_the_sync_commands_and_bad_values_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from director.cli.dirctl import run

    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n  lvs_timeouts tcp 900\n  lvs_sync_daemon int0 VI_1\n}\n"
                    + VRRP)  # fmt: skip
    assert run(["--socket", str(tmp_path / "none.sock"), "import-keepalived", "--dry-run",
                str(conf)]) == 0  # fmt: skip
    assert capsys.readouterr().out == (
        "dirctl set-timeout 900 0 0\n"
        "dirctl start-daemon backup --mcast-interface int0 --syncid 51\n"
    )
    conf.write_text("global_defs {\n  lvs_sync_daemon int0 VI_1 ttl 0\n}\n" + VRRP)
    assert run(["import-keepalived", "--dry-run", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err == f"dirctl: {conf}:2: lvs_sync_daemon: ttl must be 1 to 255, not '0'\n"


# --- lb_kind TUN's tunnel types (check_parser.c svr_forwarding_handler) ---------------


def test_lb_kind_tun_with_a_tunnel_type(tmp_path: Path) -> None:
    """``lb_kind TUN type gue port 6080 csum`` on the virtual server gives its real
    servers that tunnel; a real server's own ``lb_kind TUN type gre`` replaces it."""
    result = translate_text(
        tmp_path,
        "virtual_server 203.0.113.7 80 {\n  lb_algo rr\n  lb_kind TUN type gue port 6080 csum\n"
        "  real_server 198.18.0.3 80 {\n  }\n"
        "  real_server 198.18.0.4 80 {\n    lb_kind TUN type gre\n  }\n}\n",
    )
    assert keepalived.as_commands(result).splitlines()[1:] == [
        "dirctl add-server -t 203.0.113.7:80 -r 198.18.0.3:80 -i --tun-type gue --tun-port 6080 "
        "--tun-csum",
        "dirctl add-server -t 203.0.113.7:80 -r 198.18.0.4:80 -i --tun-type gre --tun-nocsum",
    ]
    assert result.untranslated == []
    assert keepalived.as_rules(result).splitlines()[1:] == [
        "-a -t 203.0.113.7:80 -r 198.18.0.3:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum",
        "-a -t 203.0.113.7:80 -r 198.18.0.4:80 -i -w 1 --tun-type gre --tun-nocsum",
    ]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("TUN type gue", "gue tunnels require port, otherwise cannot have port."),
        ("TUN type gre port 1", "gue tunnels require port, otherwise cannot have port."),
        ("TUN type ipip csum", "ipip tunnels do not support checksum option."),
        ("TUN type gre remcsum", "gre tunnels do not support remote checksum option."),
        ("TUN type vxlan", "Unknown tunnel type vxlan"),
        ("TUN type gue port 0", "Invalid gue tunnel port 0"),
        ("TUN fast", "Invalid tunnel option fast"),
    ],
)
def test_bad_tunnel_options_name_the_line(tmp_path: Path, kind: str, reason: str) -> None:
    """keepalived's own words for a tunnel it refuses (svr_forwarding_handler)."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(f"virtual_server 203.0.113.7 80 {{\n  lb_kind {kind}\n}}\n")
    with pytest.raises(ConfigError, match=f"^{conf}:2: {reason}$"):
        keepalived.translate(keepalived.parse_file(conf))
