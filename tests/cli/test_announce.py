"""What a director announces to its ECMP router (director.ctl.announce) and the
``dirctl announce`` process ExaBGP runs (director.cli.announce).

The lines are ExaBGP's text API for processes (ExaBGP 4 wiki, "Controlling ExaBGP:
API for processes"; src/exabgp/reactor/api/command/announce.py takes
``announce route <prefix> next-hop <ip|self>`` and ``withdraw route ...``)."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

from director.cli import announce as cli
from director.cli import dirctl
from director.ctl.announce import Announcer, dest_serves, route_line, served_vips

VIP = "198.51.100.5"
OTHER = "198.51.100.6"


def dest(weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {"addr": "198.18.0.2", "port": 80, "weight": weight, **extra}


def snap(*services: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"services": [{"addr": addr, "port": 80, "dests": dests} for addr, dests in services]}


def test_exabgp_api_lines() -> None:
    assert route_line("announce", VIP) == "announce route 198.51.100.5/32 next-hop self"
    assert route_line("withdraw", VIP) == "withdraw route 198.51.100.5/32 next-hop self"
    assert route_line("announce", "2001:db8:1::100", "2001:db8:1::1") == (
        "announce route 2001:db8:1::100/128 next-hop 2001:db8:1::1"
    )


def test_a_real_server_serves_only_with_weight_a_route_and_a_passed_check() -> None:
    assert dest_serves(dest())  # unchecked: the operator's weight decides
    assert dest_serves(dest(state="up"))
    assert not dest_serves(dest(weight=0))  # quiesced, by hand or by a failed check
    assert not dest_serves(dest(state="down"))
    assert not dest_serves(dest(state="unknown"))  # not checked yet: no proof
    assert not dest_serves(dest(state="sorry"))  # a sorry server is not a healthy one
    assert not dest_serves(dest(unreachable="no route"))


def test_served_vips_needs_one_serving_real_server_of_any_service() -> None:
    s = snap((VIP, [dest(weight=0), dest(state="up")]), (OTHER, [dest(state="down")]),
             ("", [dest()]))  # fmt: skip
    assert served_vips(s) == {VIP}
    assert served_vips(snap((VIP, []))) == frozenset()
    assert served_vips({}) == frozenset()


def test_announce_once_withdraw_once() -> None:
    a = Announcer([VIP, OTHER])
    assert a.step({VIP}) == [route_line("announce", VIP)]
    assert a.step({VIP}) == []  # nothing new: nothing said
    assert a.step({VIP, OTHER}) == [route_line("announce", OTHER)]
    assert a.step(set()) == [route_line("withdraw", VIP), route_line("withdraw", OTHER)]
    assert a.step(set()) == []
    assert a.step({"198.51.100.99"}) == []  # not ours to announce


def test_rise_and_fall_count_checks_in_a_row() -> None:
    a = Announcer([VIP], rise=2, fall=3)
    assert a.step({VIP}) == []
    assert a.step(set()) == []  # the streak is broken
    assert a.step({VIP}) == []
    assert a.step({VIP}) == [route_line("announce", VIP)]
    assert a.step(set()) == a.step(set()) == []
    assert a.step({VIP}) == []  # back before the third failure: stays announced
    assert a.step(set()) == a.step(set()) == []
    assert a.step(set()) == [route_line("withdraw", VIP)]


def test_withdraw_all_says_only_what_was_announced() -> None:
    a = Announcer([VIP, OTHER])
    a.step({OTHER})
    assert a.withdraw_all() == [route_line("withdraw", OTHER)]
    assert a.withdraw_all() == []


def test_a_daemon_that_does_not_answer_serves_nothing(tmp_path: Path) -> None:
    assert cli.check_once(str(tmp_path / "absent.sock"), 0.5) == frozenset()


def test_the_loop_prints_a_withdrawal_when_the_daemon_goes(
    tmp_path: Path, monkeypatch: Any
) -> None:
    answers = iter([{VIP}, {VIP}, set()])
    stop = threading.Event()

    def check(path: str, timeout: float) -> frozenset[str]:
        try:
            return frozenset(next(answers))
        except StopIteration:
            stop.set()
            return frozenset()

    monkeypatch.setattr(cli, "check_once", check)
    out = io.StringIO()
    cli.loop("unused", Announcer([VIP]), 0.001, 1.0, stop, out)
    assert out.getvalue().splitlines() == [route_line("announce", VIP),
                                           route_line("withdraw", VIP)]  # fmt: skip


def test_bad_input_exits_2(capsys: Any) -> None:
    for argv in (["announce", "--vip", "nope"], ["announce", "--vip", VIP, "--interval", "0"],
                 ["announce", "--vip", VIP, "--fall", "0"],
                 ["announce", "--vip", VIP, "--next-hop", "x"]):  # fmt: skip
        assert dirctl.run(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("dirctl: ") and err.count("\n") == 1, err
