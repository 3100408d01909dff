"""`dirctl lab` says what failed, with the failing command's stderr, and exits 1."""

from __future__ import annotations

import pytest

from director.cli.dirctl import run
from director.lab import lab, topology


def test_a_failed_build_shows_the_commands_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def build(prefix: str, kind: str) -> topology.Lab:
        raise topology.CommandFailed(
            1, ["ip", "netns", "exec", "x", "true"], "", 'Cannot open network namespace "x"\n'
        )

    monkeypatch.setattr(lab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab.topology, "namespace_exists", lambda name: False)
    monkeypatch.setattr(lab.topology, "build", build)
    assert run(["lab", "up", "--name", "dnothing"]) == 1
    err = capsys.readouterr().err
    assert err == (
        'lab: `ip netns exec x true` failed with exit status 1: Cannot open network namespace "x"\n'
    )
