"""Sync daemons and mixed-family services exclude each other, as in the kernel
(net/netfilter/ipvs/ip_vs_ctl.c): ip_vs_genl_new_daemon refuses to start one while
``ipvs->mixed_address_family_dests > 0`` and ip_vs_genl_set_cmd refuses a real server
of the other family while ``ipvs->sync_state`` is set, both -EINVAL: no sync entry can
say such a connection (its three addresses are of one family).  Without root: the
daemon's in-memory hooks (tests/target.py), and a backup "running" without a socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from director.core.sync import mixed_family
from director.ctl.ipvsadm import load_rules
from director.model.config import ConfigError
from director.shell.daemon import Daemon
from tests.target import MemoryHooks, StaticRoutes, close, settings_in

PLAIN = "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.19.0.2:80 -i\n"
MIXED = "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r [2001:db8:3::2]:80 -i\n"
MIXED6 = "-A -t [2001:db8:1::100]:80 -s rr\n-a -t [2001:db8:1::100]:80 -r 198.19.0.2:80 -i\n"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    settings = settings_in(tmp_path)
    settings.state_dir.mkdir()
    d = Daemon(settings, hooks=MemoryHooks(queue=settings.queue_num, mark=settings.send_mark),
               routes=StaticRoutes())  # fmt: skip
    yield d
    close(d)


def test_mixed_family_names_the_first_mixed_server() -> None:
    assert mixed_family(load_rules(PLAIN)) is None
    fwm6 = "-A -f 7 -6 -s rr\n-a -f 7 -6 -r [2001:db8:2::2]:0 -g\n"
    assert mixed_family(load_rules(fwm6)) is None  # an IPv6 firewall-mark service
    fwm4 = mixed_family(load_rules("-A -f 7 -s rr\n-a -f 7 -r [2001:db8:2::2]:0 -i\n"))
    assert fwm4 is not None and fwm4.endswith("(2001:db8:2::2 in FWM 7)")
    message = mixed_family(load_rules(MIXED))
    assert message is not None and "2001:db8:3::2 in TCP 203.0.113.5" in message
    assert "\n" not in message
    assert mixed_family(load_rules(MIXED6)) is not None


def test_a_sync_daemon_does_not_start_with_a_mixed_family_service(daemon: Daemon) -> None:
    daemon.commit(load_rules(MIXED))
    with pytest.raises(ConfigError, match="cannot carry mixed-family"):
        daemon.sync_daemon("start", {"state": "backup", "mcast_ifn": "lo"})
    assert daemon.sync.state == 0


def test_a_mixed_family_server_is_refused_while_a_sync_daemon_runs(daemon: Daemon) -> None:
    daemon.commit(load_rules(PLAIN))
    daemon.sync.receiver = object()  # type: ignore[assignment]  # a backup runs
    try:
        with pytest.raises(ConfigError, match="a sync daemon runs"):
            daemon.commit(load_rules(MIXED))
        assert daemon.config == load_rules(PLAIN)
        daemon.commit(load_rules(PLAIN.replace("198.19.0.2", "198.19.0.3")))  # not mixed
    finally:
        daemon.sync.receiver = None
    daemon.commit(load_rules(MIXED))  # no sync daemon: taken
