"""GUE and GRE tunnels in the control plane: what ipvsadm 1.31 takes, saves and lists.

The expected texts are ipvsadm 1.31's own, captured on kernel 6.1 in the IPVS VM
(tests/ctl/ipvsadm131/tuntype.sh -> vm_tuntype.out): ``-Sn``, ``-Ln --tun-info`` and the
tunnel options' errors (ipvsadm.c tunnel_opt_check, print_tunnel_rule, fwd_tun_info).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from director.ctl.ipvsadm import RawArgs, build_op, format_save, load_rules, parse_args
from director.ctl.ipvsadm_cmdline import parse
from director.ctl.listing import ListFormat, find_service, format_list
from director.ctl.ops import AddServer, EditServer, apply
from director.model.config import ConfigError
from tests.conftest import MakeTarget

CAPTURE = (Path(__file__).parent / "ipvsadm131" / "vm_tuntype.out").read_text()


def _section(title: str) -> str:
    """The lines under ``===== title =====`` up to the next banner."""
    text = CAPTURE.split(f"===== {title} =====\n", 1)[1]
    return text.split("\n=====", 1)[0].split("\n\n", 1)[0].rstrip("\n") + "\n"


SAVED = _section("ipvsadm -Sn")


def test_save_prints_the_tunnel_as_ipvsadm_does() -> None:
    """Restored and saved again, every line is ipvsadm -Sn's: ``--tun-type gue
    --tun-port P --tun-nocsum|--tun-csum|--tun-remcsum``, ``--tun-type gre
    --tun-nocsum|--tun-csum`` (the checksum option always), ``--tun-type ipip``."""
    config = load_rules(SAVED)
    assert format_save(config) == SAVED
    gue = config.services[0].dests[0]
    assert (gue.tun_type, gue.tun_port, gue.tun_flags) == ("gue", 6080, "nocsum")


def test_list_tun_info_is_ipvsadms(make_target: MakeTarget) -> None:
    """``list --tun-info``: ipvsadm's TunnelInfo column (gue:PORT:-c|+c|r+c, gre:-c|+c,
    ipip, n/a for another method), for the whole table and for one service."""
    snap = make_target(SAVED).snapshot(conns=False)
    assert format_list(snap, ListFormat(tun_info=True)) == _section("ipvsadm -Ln --tun-info")
    one = find_service(snap, ("tcp", "203.0.113.7", 80))
    expected = _section("ipvsadm -Ln --tun-info -t 203.0.113.7:80").replace("rc 0\n", "")
    assert format_list(snap, ListFormat(tun_info=True), one) == expected


def test_list_json_carries_the_tunnel(make_target: MakeTarget) -> None:
    snap = json.loads(json.dumps(make_target(SAVED).snapshot(conns=False)))
    gre = find_service(snap, ("tcp", "203.0.113.7", 84))
    assert gre is not None
    (dest,) = gre["dests"]
    assert (dest["tun_type"], dest["tun_port"], dest["tun_flags"]) == ("gre", 0, "csum")
    masq = find_service(snap, ("tcp", "203.0.113.7", 86))
    assert masq is not None
    assert all("tun_type" not in d for d in masq["dests"] if d["method"] == "masq")


def _errors() -> list[tuple[str, str, int]]:
    found = []
    for block in _section("errors").split("### ipvsadm ")[1:]:
        args, *rest = block.rstrip("\n").split("\n")
        rc = int(rest[-1].split()[1])
        found.append((args, rest[0] if len(rest) > 1 else "", rc))
    return found


@pytest.mark.parametrize(("args", "message", "rc"), _errors(), ids=lambda v: str(v))
def test_tunnel_option_errors_are_ipvsadms(args: str, message: str, rc: int) -> None:
    """Each tunnel command line of the capture: refused with ipvsadm's words (status 2)
    by both the restore parser and director-ipvsadm's, or taken."""
    if rc == 0:
        parse_args(shlex.split(args))
        return
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        parse_args(shlex.split(args))


def test_ipvsadm_edit_sends_a_whole_destination() -> None:
    """The capture's ``-e ... -i --tun-type gre`` then ``-e ... -i`` leave the GUE server
    an IPIP one (ipvsadm -e sends the default tunnel type, ipip)."""
    config = load_rules(SAVED)
    for line in ("-e -t 203.0.113.7:80 -r 198.18.0.3 -i --tun-type gre",
                 "-e -t 203.0.113.7:80 -r 198.18.0.3 -i"):  # fmt: skip
        op = parse(shlex.split(line)).op
        assert op is not None
        config = apply(config, op)
    assert format_save(config) == _section("after edits")


def test_dirctl_edit_server_keeps_what_is_not_given() -> None:
    """dirctl edit-server changes only what it is given: the port alone of a GUE
    server, a new type with its own options; leaving VS/TUN drops the tunnel."""
    config = load_rules(SAVED)
    port = build_op("edit-server", RawArgs(("tcp", "203.0.113.7:80"), real_server="198.18.0.3",
                                           tun_port="7000", tun_csum=True))  # fmt: skip
    assert isinstance(port, EditServer)
    edited = apply(config, port).services[0].dests[0]
    assert (edited.tun_type, edited.tun_port, edited.tun_flags) == ("gue", 7000, "csum")
    gre = build_op("edit-server", RawArgs(("tcp", "203.0.113.7:80"), real_server="198.18.0.3",
                                          tun_type="gre"))  # fmt: skip
    edited = apply(config, gre).services[0].dests[0]
    assert (edited.tun_type, edited.tun_port, edited.tun_flags) == ("gre", 0, "nocsum")
    masq = build_op("edit-server", RawArgs(("tcp", "203.0.113.7:80"), real_server="198.18.0.3",
                                           method="m"))  # fmt: skip
    edited = apply(config, masq).services[0].dests[0]
    assert (edited.method, edited.tun_type, edited.tun_port) == ("masq", "ipip", 0)
    with pytest.raises(ConfigError, match="Tunnel options conflict with forward method"):
        masq_port = build_op(
            "edit-server",
            RawArgs(("tcp", "203.0.113.7:86"), real_server="198.18.0.3:86", tun_port="1"),
        )
        apply(config, masq_port)
    with pytest.raises(ConfigError, match="Illegal 'tun-port' option with the 'gre'"):
        gre_port = build_op(
            "edit-server",
            RawArgs(("tcp", "203.0.113.7:83"), real_server="198.18.0.6", tun_port="1"),
        )
        apply(config, gre_port)


def test_add_server_without_i_conflicts() -> None:
    """vm_ipvsadm_cli.out: ``-a ... --tun-type gue --tun-port 6080`` without -i."""
    with pytest.raises(ConfigError, match=r"^Tunnel options conflict with forward method$"):
        parse_args(shlex.split("-a -t 203.0.113.7:80 -r 198.18.0.2 --tun-type gue --tun-port 6080"))
    with pytest.raises(ConfigError, match=r"^Tunnel options conflict with forward method$"):
        parse_args(shlex.split("-a -t 203.0.113.7:80 -r 198.18.0.2 -m --tun-csum"))
    op = parse_args(shlex.split("-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-type gre --tun-csum"))
    assert isinstance(op, AddServer) and op.dest.tun_flags == "csum"
