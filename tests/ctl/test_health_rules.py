"""Checks as words and rules-file lines: round trips and bad input, all or nothing."""

from __future__ import annotations

import pytest

from director.ctl.ipvsadm import format_save, load_rules, restore
from director.model.config import ConfigError

BASE = """-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1
-a -t 203.0.113.5:80 -r 198.18.0.3 -g -w 1
"""


def test_round_trip_with_every_option() -> None:
    text = BASE + (
        "# director-check -t 203.0.113.5:80 -r 198.18.0.2:80 --type https --port 8443 "
        "--path /h --status 200,204 --digest 0123456789abcdef0123456789ABCDEF "
        "--contains 'all good' --host www.example.org --interval 0.5 --timeout 1 --rise 2 "
        "--fall 3 --retry 1 --retry-delay 0.2 --warmup 1 --on-failure remove\n"
        "# director-check -t 203.0.113.5:80 -r 198.18.0.3:80 --type tcp --via-vip\n"
        "# director-check -t 203.0.113.5:80 --type misc --command '/bin/check \"a b\"'\n"
        "# director-health -t 203.0.113.5:80 --sorry-server 198.18.0.9:80 -m --quorum 2\n"
    )
    config = load_rules(text)
    assert len(config.health.checks) == 3
    assert config.health.checks[0].digest == "0123456789abcdef0123456789abcdef"
    assert load_rules(format_save(config)) == config
    plain = format_save(config, checks=False)
    assert "#" not in plain and load_rules(plain).health.checks == ()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("# director-check -t 203.0.113.5:80 --type smtp", "unknown check type"),
        ("# director-check -t 203.0.113.5:80 --fall 0", "fall must be in"),
        ("# director-check -t 203.0.113.5:80 --interval soon", "not a number"),
        ("# director-check -t 203.0.113.5:80 --digest xyz", "32 hex digits"),
        ("# director-check -t 203.0.113.5:80 --type misc", "needs --command"),
        ("# director-check -t 203.0.113.5:80 -r 198.18.0.2:80 --via-vip", "direct-routing"),
        ("# director-check -t 203.0.113.5:80 -r 198.18.0.7:80", "No such destination"),
        ("# director-check -t 203.0.113.6:80", "Service not defined"),
        ("# director-check -t 203.0.113.5:80 --bogus 1", "unknown option"),
        ("# director-check -t 203.0.113.5:80 --fall 2 --fall 3", "given twice"),
        ("# director-health -t 203.0.113.5:80 --sorry-server nowhere", "ADDR[:PORT]"),
    ],
)
def test_bad_lines_name_line_and_apply_nothing(line: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=r"line 4: .*") as err:
        restore(load_rules(""), BASE + line + "\n")
    assert reason in str(err.value)


def test_the_vip_path_probe_takes_ipv6_services() -> None:
    """The probe speaks IPv6 (director/health/synprobe.py): an IPv6 DR server's check
    may have it; a firewall-mark service, with no one VIP and port, may not."""
    text = (
        "-A -t [2001:db8:1::100]:80 -s rr\n-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:80 -g\n"
        "# director-check -t [2001:db8:1::100]:80 --type tcp --via-vip\n"
    )
    (check,) = load_rules(text).health.checks
    assert check.via_vip
    assert load_rules(format_save(load_rules(text))) == load_rules(text)
    with pytest.raises(ConfigError, match="needs a TCP service"):
        load_rules("-A -f 7 -s rr\n-a -f 7 -r 198.18.0.3 -g\n# director-check -f 7 --via-vip\n")


def test_deleting_a_server_deletes_its_check() -> None:
    config = load_rules(BASE + "# director-check -t 203.0.113.5:80 -r 198.18.0.2:80\n")
    after = restore(config, "-d -t 203.0.113.5:80 -r 198.18.0.2:80\n")
    assert after.health.checks == ()


def test_other_comments_still_ignored() -> None:
    assert load_rules("# director-checking is fun\n# just a comment\n" + BASE).health.checks == ()
