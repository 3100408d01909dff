"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from director.shell.daemon import Daemon
from tests.target import StaticRoutes, close, make_daemon, settings_in

MakeTarget = Callable[..., Daemon]

# Hypothesis fails an example that takes over 200 ms: a check of speed, not of
# behaviour, and one a loaded 2-core machine fails at random.  No test here is about speed.
settings.register_profile("director", deadline=None)
settings.load_profile("director")


@pytest.fixture
def make_target(tmp_path: Path) -> Iterator[MakeTarget]:
    """``make_target(rules="", routes=None)``: the daemon's own control target with
    in-memory hooks and routes (tests/target.py), its files under tmp_path."""
    made: list[Daemon] = []

    def make(rules: str = "", *, routes: StaticRoutes | None = None) -> Daemon:
        daemon = make_daemon(settings_in(tmp_path / f"daemon{len(made)}"), rules, routes=routes)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        close(daemon)
