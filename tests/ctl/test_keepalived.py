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
