"""The daemon's side of the shards: a dump (the restart table, the entries a reshard
moves) split by the worker that owns each client (no netns: the in-memory hooks of
tests/target.py)."""

from __future__ import annotations

import dataclasses

import pytest

from director.core.shard import Shards
from tests.conftest import MakeTarget


def test_a_dump_is_split_by_the_owner_of_each_client(make_target: MakeTarget) -> None:
    daemon = make_target()
    daemon.settings = dataclasses.replace(daemon.settings, workers=2)
    entries = [
        {"caddr": "198.51.100.7", "n": 1},  # a template, before the connection it controls
        {"caddr": "198.51.100.6", "n": 2},
        {"caddr": "198.51.100.7", "n": 3},
        {"caddr": "2001:db8::7", "n": 4},  # IPv6: worker 0
    ]
    parts = daemon._by_owner({"format": 9, "conns": entries}, Shards(2, (0,)))
    assert [[e["n"] for e in part["conns"]] for part in parts] == [[2, 4], [1, 3]]
    assert [part["format"] for part in parts] == [9, 9]
    for bad in ([], {"conns": "x"}, {"format": 9}):
        with pytest.raises(ValueError, match="not a connection dump"):
            daemon._by_owner(bad, Shards(2, (0,)))  # type: ignore[arg-type]
