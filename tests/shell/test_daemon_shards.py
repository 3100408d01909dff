"""The daemon's side of the shards: a restart dump split by the worker that owns each
client, and a change whose persistence netmask would split a client network between
workers refused (no netns: the in-memory hooks of tests/target.py)."""

from __future__ import annotations

import dataclasses

import pytest

from director.core.shard import Shards
from director.ctl.ipvsadm import format_save, load_rules
from director.model.config import ConfigError
from tests.conftest import MakeTarget

SLASH24 = (
    "-A -t 203.0.113.5:80 -s rr -p 300 -M 255.255.255.0\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
)


def test_a_dump_is_split_by_the_owner_of_each_client(make_target: MakeTarget) -> None:
    daemon = make_target()
    daemon.settings = dataclasses.replace(daemon.settings, workers=2)
    daemon.shards = Shards(2, (0,))
    entries = [
        {"caddr": "198.51.100.7", "n": 1},  # a template, before the connection it controls
        {"caddr": "198.51.100.6", "n": 2},
        {"caddr": "198.51.100.7", "n": 3},
        {"caddr": "2001:db8::7", "n": 4},  # IPv6: worker 0
    ]
    parts = daemon._by_owner({"format": 9, "conns": entries})
    assert [[e["n"] for e in part["conns"]] for part in parts] == [[2, 4], [1, 3]]
    assert [part["format"] for part in parts] == [9, 9]
    for bad in ([], {"conns": "x"}, {"format": 9}):
        with pytest.raises(ValueError, match="not a connection dump"):
            daemon._by_owner(bad)  # type: ignore[arg-type]


def test_a_netmask_that_leaves_out_a_shard_bit_is_refused(make_target: MakeTarget) -> None:
    """Sharded by the last bit (no persistence at start), a /24 persistent service would
    put one client network's template on two workers: refused, nothing changed."""
    daemon = make_target("-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n")
    before = format_save(daemon._config)
    daemon.shards = Shards(2, (0,))
    with pytest.raises(ConfigError, match=r"leaves out client address bits .*0\.0\.0\.1"):
        daemon.commit(load_rules(SLASH24))
    assert format_save(daemon._config) == before
    daemon.shards = Shards(2, (8,))  # cut inside the /24 at start: taken
    daemon.commit(load_rules(SLASH24))
    assert "-M 255.255.255.0" in format_save(daemon._config)
