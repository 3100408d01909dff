"""The lab itself: it builds SPEC §3's topology, and teardown removes all of it."""

from __future__ import annotations

import subprocess

import pytest

from director.lab import topology


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_backends_answer_with_their_names_across_the_director(lab: topology.Lab) -> None:
    for rs in lab.real_servers:
        for port in topology.BACKEND_PORTS:
            got = lab.run(lab.client, ["curl", "-sS", "-m", "3", f"http://{rs.addr}:{port}/"])
            assert got.stdout == f"{rs.name} {rs.addr}:{port}\n"


def test_director_forwards_and_holds_the_vip(lab: topology.Lab) -> None:
    addrs = lab.run(lab.director, ["ip", "-4", "-o", "addr", "show", "ext0"]).stdout
    assert f"{lab.vip}/32" in addrs
    forward = lab.run(lab.director, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout
    assert forward.strip() == "1"


def test_teardown_after_a_partial_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("injected failure half way")

    monkeypatch.setattr(topology, "_sysctl", broken)
    prefix = topology.new_prefix("dbroken")
    with pytest.raises(RuntimeError, match="injected"):
        topology.build(prefix)
    assert not [name for name in _namespaces() if name.startswith(prefix)]
