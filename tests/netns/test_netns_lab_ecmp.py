"""`dirctl lab up --kind ecmp`, `lab down` and `lab demo --method ecmp` as a person runs
them: the real BIRD and ExaBGP started in the lab's namespaces and ended with it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from director.lab import ecmp, topology
from director.lab.daemon import venv_program
from tests.skips import unavailable


def _needs_bgp() -> None:
    missing = ecmp.missing_program()
    if missing:
        unavailable(f"{missing} is not installed (.ci/install-deps test: bird2, exabgp)")


def _run(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _namespaces(prefix: str) -> list[str]:
    return [n for n in _run("ip", "netns", "list").stdout.split() if n.startswith(prefix)]


def _pids(ns: str) -> list[int]:
    return [int(p) for p in _run("ip", "netns", "pids", ns).stdout.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_lab_up_kind_ecmp_then_down_leaves_no_process_nor_namespace() -> None:
    _needs_bgp()
    name = topology.new_prefix("decup")
    dirctl = venv_program("dirctl")
    started: list[int] = []
    try:
        up = _run(dirctl, "lab", "up", "--kind", "ecmp", "--name", name)
        assert up.returncode == 0, up.stderr + up.stdout
        assert "nexthop via 198.18.0.101" in up.stdout and "198.18.0.103" in up.stdout
        answer = _run("ip", "netns", "exec", f"{name}-client", "curl", "-sS", "-m", "3",
                      f"http://{ecmp.VIP}/")  # fmt: skip
        assert re.fullmatch(r"rs[12] 198\.51\.100\.5:80\n", answer.stdout), answer
        # BIRD in the router, ExaBGP (and its dirctl announce) in every director.
        started = [p for ns in (f"{name}-router", f"{name}-dir1", f"{name}-dir2",
                                f"{name}-dir3") for p in _pids(ns)]  # fmt: skip
        names = " ".join(_cmdline(p) for p in started)
        assert "bird -f" in names and names.count("/usr/sbin/exabgp") == 3, names
        assert names.count(" announce --vip 198.51.100.5") == 3, names
        again = _run(dirctl, "lab", "up", "--kind", "ecmp", "--name", name)
        assert again.returncode == 1 and "lab down" in again.stderr
    finally:
        down = _run(dirctl, "lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert _namespaces(name) == []
    assert [p for p in started if _cmdline(p)] == []
    assert not Path(f"/run/director-lab/{name}").exists()


def test_demo_ecmp_shows_a_director_die_and_a_newcomer_take_its_place() -> None:
    _needs_bgp()
    done = _run(venv_program("dirctl"), "lab", "demo", "--method", "ecmp", "--requests", "6")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    prefix = re.search(r"== ECMP lab (\S+):", out)
    assert prefix is not None, out
    assert "crashes: kill -9 of its directord" in out
    assert re.search(r"the router dropped 198\.18\.0\.10[123] [\d.]+ s after the kill", out), out
    assert "curl exit 0, 1048576 bytes of 1048576" in out, out
    assert "failed" not in out, out
    assert out.count("nexthop via") == 3 + 2 + 3, out
    assert f"== lab {prefix.group(1)} removed" in out
    assert _namespaces(prefix.group(1)) == []
