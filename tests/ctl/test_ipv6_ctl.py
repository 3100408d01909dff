"""IPv6 in the control plane, against what ipvsadm 1.31 itself printed.

Every expected text here comes from tests/ctl/oracle/ipvsadm_v6.out: ipvsadm 1.31 (and
keepalived 2.2.7) on the stock Debian 12 kernel's IPVS, run by the job
tests/ctl/oracle/ipvsadm_v6.sh on the oracle VM (../shared/ipvs-vm).  The layouts are
those of ipvsadm.c print_service_entry (``FWM  %d IPv6``, ``-f %d -6``, ``mask %i`` for
an IPv6 prefix, ``[addr]:port`` from addrport_to_anyname), print_conn and list_conn;
the error words those of process_options, parse_service and the kernel's answers.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from director.core.engine import Director
from director.ctl import keepalived, report
from director.ctl.ipvsadm import format_save, load_rules, parse_args, parse_line
from director.ctl.listing import ListFormat, find_service, format_conns, format_list
from director.ctl.ops import apply
from director.ctl.snapshot import ConnDict, Snapshot
from director.model.config import Config, ConfigError

ORACLE = Path(__file__).parent / "oracle" / "ipvsadm_v6.out"
PROMPT = "# ip netns exec d ipvsadm "
# ipvsadm reads -M 24 of an IPv4 service with inet_aton (0.0.0.24); director reads a
# prefix length there.  Not an IPv6 matter: that service is left out of the replay.
IPV4_MASK_QUIRK = "203.0.113.6:"
NOISE = ("Traceback", "  File", "    ", "OSError", "TimeoutError", "ConnectionRefused")


def _sections() -> list[tuple[str, list[str]]]:
    """(ipvsadm arguments, the lines it printed) for each command of the capture; the
    client's Python tracebacks of the traffic part are not ipvsadm's."""
    found: list[tuple[str, list[str]]] = []
    for line in ORACLE.read_text().splitlines():
        if line.startswith(PROMPT):
            found.append((line[len(PROMPT) :], []))
        elif line.startswith(("=====", "# ")):
            found.append(("", []))  # a banner or another command ends the output
        elif found and not line.startswith(NOISE):
            found[-1][1].append(line)
    return [(args, lines) for args, lines in found if args]


def printed(args: str, nth: int = 0) -> str:
    """What ``ipvsadm ARGS`` printed the nth time it ran in the capture."""
    runs = [lines for command, lines in _sections() if command == args]
    # Blank lines are the job's banners' (ipvsadm prints none in these outputs).
    lines = [line for line in runs[nth] if line and not line.startswith("exit ")]
    return "".join(f"{line}\n" for line in lines if IPV4_MASK_QUIRK not in line)


def _replay(until: str) -> Config:
    """The capture's configuration commands up to the first ``until``, each applied as
    ipvsadm did: those it refused fail here with its words, the others succeed."""
    config = Config()
    for args, lines in _sections():
        if args == until:
            return config
        words = shlex.split(args)
        if words[0] in ("-L", "-S", "-R", "-C", "-Z") or IPV4_MASK_QUIRK in args:
            continue
        said = [line for line in lines if line and not line.startswith("exit ")]
        if said:
            with pytest.raises(ConfigError) as refused:
                config = apply(config, parse_args(words))
            assert str(refused.value) == said[0], args
        else:
            config = apply(config, parse_args(words))
    raise AssertionError(f"{until!r} is not in the capture")


def _snapshot(config: Config) -> Snapshot:
    """The daemon's own snapshot code over the pure core's tables of ``config`` (no
    routes here: the route marker of DR and TUN servers is not under test)."""
    director = Director()
    director.configure(config)
    snap = report.snapshot(director, (900, 120, 300), 0.0, conns=False)
    for svc in snap["services"]:
        for dest in svc["dests"]:
            dest.pop("unreachable", None)
    return snap


def test_ipvsadm_commands_accept_and_refuse_as_ipvsadm_1_31() -> None:
    """-f N -6, [v6]:port, -M as a prefix length (1..128), mixed families for tunnels
    only, ``-6 used before -f``, ``[addr]`` without a port: each command of the capture
    gives the same outcome and, when refused, the same message."""
    config = _replay("-L -n")
    assert [svc.key for svc in config.services if svc.protocol == "fwm"] == [
        ("fwm", "::", 1),
        ("fwm", "", 2),
        ("fwm", "::", 3),
        ("fwm", "", 1),
    ]


def test_save_prints_what_ipvsadm_save_prints() -> None:
    """ipvsadm -S -n of the same table, line for line (ipvsadm sorts, director keeps the
    order it was given: the capture's own order goes in, so the same comes out)."""
    saved = printed("-S -n")
    assert format_save(load_rules(saved)) == saved
    assert "-A -f 1 -6 -s wlc -p 360\n" in saved
    assert "-A -u [2001:db8:1::100]:53 -s sh -p 600 -M 64\n" in saved


@pytest.mark.parametrize(
    ("args", "fmt"),
    [
        ("-L -n", ListFormat()),
        ("-L -n --thresholds", ListFormat(thresholds=True)),
        ("-L -n --persistent-conn", ListFormat(persistent_conn=True)),
        ("-L -n --stats", ListFormat(stats=True)),
        ("-L -n --rate", ListFormat(rate=True)),
        ("-L -n --exact --stats", ListFormat(stats=True, exact=True)),
    ],
)
def test_list_layouts_are_ipvsadms(args: str, fmt: ListFormat) -> None:
    """``FWM  1 IPv6``, ``mask 64``, ``[2001:db8:2::2]:8080`` in the 28-wide column,
    IPv4 real servers of an IPv6 service first (ipvs_cmp_dests), IPv4 services before
    IPv6 ones of the same mark (ipvs_cmp_services)."""
    assert format_list(_snapshot(_replay("-L -n")), fmt) == printed(args)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ("-L -n -t [2001:db8:1::100]:80", ("tcp", "2001:db8:1::100", 80)),
        ("-L -n -f 1 -6", ("fwm", "::", 1)),
        ("-L -n -f 1", ("fwm", "", 1)),
        ("-L -n -u [2001:db8:1::100]:53", ("udp", "2001:db8:1::100", 53)),
    ],
)
def test_list_one_service(args: str, key: tuple[str, str, int]) -> None:
    snap = _snapshot(_replay("-L -n"))
    svc = find_service(snap, key)
    assert svc is not None
    assert format_list(snap, ListFormat(), svc) == printed(args)


def test_list_of_a_missing_ipv6_fwmark_service() -> None:
    """``ipvsadm -L -n -f 2 -6`` with only an IPv4 ``-f 2``: No such service."""
    assert printed("-L -n -f 2 -6") == "No such service\n"
    assert find_service(_snapshot(_replay("-L -n")), ("fwm", "::", 2)) is None


def test_edits_then_save_and_restore_round_trip() -> None:
    """-e and -d of IPv6 real servers and -D, then ipvsadm -S -n, -C, -R, -S -n: the
    table saved after the restore is the capture's."""
    config = _replay("-C")
    saved = format_save(config)
    assert format_save(load_rules(saved)) == saved
    # ipvsadm-save drops thresholds; director keeps them (director.ctl.ipvsadm's docstring).
    kept = re.sub(r" -x \d+ -y \d+", "", saved)
    ours = sorted(line for line in kept.splitlines() if IPV4_MASK_QUIRK not in line)
    assert ours == sorted(printed("-S -n", 1).splitlines())


def _conns(lines: str) -> list[ConnDict]:
    """ConnDicts of the entries ipvsadm -Lcn printed (its mm:ss back to seconds)."""
    rows = []
    for line in lines.splitlines()[2:]:
        proto, expire, state, source, virtual, dest = line.split()
        minutes, seconds = expire.split(":")
        addrs = [re.fullmatch(r"\[?(.*?)\]?:(\d+)", word) for word in (source, virtual, dest)]
        (caddr, cport), (vaddr, vport), (daddr, dport) = (m.groups() for m in addrs if m)
        rows.append(
            ConnDict(protocol=proto, state=state, expires=int(minutes) * 60 + int(seconds),
                     caddr=caddr, cport=int(cport), vaddr=vaddr, vport=int(vport),
                     daddr=daddr, dport=int(dport))
        )  # fmt: skip
    return rows


def test_connection_listing_of_ipv6_entries() -> None:
    """ipvsadm -Lcn's ``%-18s`` columns, which IPv6 names overflow, and the persistence
    template of a /64 (``[2001:db8:1::]:0``), as print_conn printed them."""
    text = printed("-L -n -c")
    snap = _snapshot(Config())
    snap["conns"] = _conns(text)
    assert len(snap["conns"]) == 8
    assert format_conns(snap) == text
    # --persistent-conn: list_conn's header with the pe columns, print_conn's same rows
    # (listed a second later: the expiry column is that listing's).
    text = printed("-L -n -c --persistent-conn")
    snap["conns"] = _conns(text)
    assert format_conns(snap, persistent=True) == text


def test_dash_6_only_modifies_a_fwmark_service() -> None:
    """ipvsadm: ``-6 used before -f`` unless a -f came first."""
    for line in ("-A -t [2001:db8:1::107]:80 -6", "-A -6 -f 1", "-D -6"):
        with pytest.raises(ConfigError, match=r"^-6 used before -f$"):
            parse_line(line)
    assert printed("-A -t [2001:db8:1::107]:80 -6").startswith("-6 used before -f\n")


KEEPALIVED_CONF = """\
virtual_server 2001:db8:1::100 80 {
  lb_algo rr
  lb_kind NAT
  protocol TCP
  persistence_timeout 100
  persistence_granularity 64
  real_server 2001:db8:2::2 8080 {
    weight 3
  }
  real_server 2001:db8:2::3 8080 {
  }
}
virtual_server [2001:db8:1::101]:443 {
  lb_algo wlc
  lb_kind DR
  protocol TCP
  real_server 2001:db8:2::2 443 {
  }
}
virtual_server fwmark 7 {
  ip_family inet6
  lb_algo rr
  lb_kind TUN
  real_server 2001:db8:2::4 0 {
  }
}
virtual_server fwmark 8 {
  lb_algo rr
  lb_kind TUN
  real_server 2001:db8:2::5 0 {
  }
}
virtual_server 203.0.113.7 80 {
  lb_algo rr
  lb_kind TUN
  protocol TCP
  real_server 2001:db8:3::2 80 {
  }
}
"""


def test_import_keepalived_with_ipv6_is_what_keepalived_gave_ipvs(tmp_path: Path) -> None:
    """The capture's keepalived.conf: keepalived 2.2.7 loaded into IPVS what ipvsadm -S
    -n printed then; ``ip_family inet6`` and a fwmark service whose only real server is
    IPv6 (check_parser.c vs_end_handler) are ``-f N -6``; ``[addr]:port`` is not
    keepalived's syntax (it skips that block: "Invalid virtual server IP address")."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(KEEPALIVED_CONF)
    result = keepalived.translate(keepalived.parse_file(conf))
    assert [item.split(": ", 1)[1] for item in result.untranslated] == [
        "virtual_server [2001:db8:1::101]:443"
    ]
    ours = keepalived.as_rules(result).splitlines()
    assert sorted(ours) == sorted(printed("-S -n", 2).splitlines())


def test_import_keepalived_skips_a_real_server_of_the_other_family(tmp_path: Path) -> None:
    """check_parser.c rs_end_handler: a real server not tunnelled whose family is not
    the virtual server's is skipped (keepalived logs "Address family of virtual server
    and real server ... don't match - skipping real server"); here it is listed as not
    translated, which stops the import unless --partial."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(
        "virtual_server 2001:db8:1::100 80 {\n lb_kind DR\n"
        " real_server 198.18.0.2 80 {\n }\n real_server 2001:db8:2::2 80 {\n }\n}\n"
    )
    result = keepalived.translate(keepalived.parse_file(conf))
    assert len(result.untranslated) == 1
    assert "198.18.0.2: address family of virtual server and real server" in str(
        result.untranslated
    )
    assert keepalived.as_rules(result) == (
        "-A -t [2001:db8:1::100]:80 -s wlc\n"
        "-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:80 -g -w 1\n"
    )


def test_health_check_lines_of_an_ipv6_fwmark_service() -> None:
    """A check of ``-f 1 -6`` is saved as ``# director-check -f 1 -6 ...`` and read back
    onto that service, not onto the IPv4 ``-f 1``."""
    config = load_rules(
        "-A -f 1 -s rr\n-A -f 1 -6 -s rr\n-a -f 1 -6 -r [2001:db8:2::2]:0 -g -w 1\n"
        "# director-check -f 1 -6 -r [2001:db8:2::2]:0 --type tcp --port 80\n"
    )
    (check,) = config.health.checks
    assert check.service == ("fwm", "::", 1)
    saved = format_save(config)
    assert "# director-check -f 1 -6 -r '[2001:db8:2::2]:0' --type tcp --port 80\n" in saved
    assert load_rules(saved) == config


@pytest.mark.parametrize(
    ("block", "six"),
    [
        ("ip_family inet6\n lb_kind DR\n real_server 2001:db8:2::2 0 {\n }", True),
        ("lb_kind DR\n real_server 2001:db8:2::2 0 {\n }", True),
        ("lb_kind DR\n persistence_granularity 64\n real_server 198.18.0.2 0 {\n }", True),
        ("lb_kind DR\n real_server 198.18.0.2 0 {\n }\n persistence_granularity 64", False),
        ("lb_kind TUN\n real_server 2001:db8:2::2 0 {\n }\n real_server 198.18.0.2 0 {\n }",
         False),
        ("lb_kind TUN\n real_server 2001:db8:3::2 0 {\n }", True),
    ],
)  # fmt: skip
def test_family_of_a_keepalived_fwmark_service(tmp_path: Path, block: str, six: bool) -> None:
    """check_parser.c: whichever of ip_family, persistence_granularity and a real server
    not tunnelled comes first settles it (ip_family_handler, pgr_handler,
    rs_end_handler); with tunnelled real servers only, theirs if they agree, else IPv4
    (vs_end_handler)."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(f"virtual_server fwmark 5 {{\n {block}\n}}\n")
    result = keepalived.translate(keepalived.parse_file(conf))
    add = result.commands[0][1]
    assert add[:3] == ["add-service", "-f", "5"]
    assert (add[3:4] == ["-6"]) == six, add
