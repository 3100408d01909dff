"""The lab itself: it builds SPEC §3's topology, and teardown removes all of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from director.lab import topology
from director.lab.daemon import venv_program


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
    forward = lab.run(lab.director, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout
    assert forward.strip() == "1"


def test_teardown_after_a_partial_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("injected failure half way")

    monkeypatch.setattr(topology, "set_sysctl", broken)
    prefix = topology.new_prefix("dbroken")
    with pytest.raises(RuntimeError, match="injected"):
        topology.build(prefix)
    assert not [name for name in _namespaces() if name.startswith(prefix)]


def test_sysctls_are_written_in_the_namespace_only(lab: topology.Lab) -> None:
    """/proc/sys/net is per namespace: the lab's write reaches the namespace it names
    (read back with `cat` inside it) and leaves this process's namespace alone."""
    key, path = "net.ipv4.conf.all.accept_local", "/proc/sys/net/ipv4/conf/all/accept_local"
    home = Path(path).read_text()
    before = topology.get_sysctl(lab.client, key)
    flipped = "0" if before == "1" else "1"
    try:
        topology.set_sysctl(lab.client, key, flipped)
        assert lab.run(lab.client, ["cat", path]).stdout.strip() == flipped
        assert topology.get_sysctl(lab.client, key) == flipped
        assert Path(path).read_text() == home
    finally:
        topology.set_sysctl(lab.client, key, before)
    with pytest.raises(OSError, match="no-such-key"):
        topology.set_sysctl(lab.client, "net.ipv4.no-such-key", "1")


def test_building_a_lab_runs_no_sysctl_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """A minimal Debian has no procps: the lab needs no `sysctl` (or any procps)
    program.  Every command the build and teardown start is recorded."""
    started: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def run(argv: list[str], *args: object, **kwargs: object) -> object:
        started.append(list(argv))
        return real_run(argv, *args, **kwargs)  # type: ignore[call-overload]

    class Popen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, argv: list[str], *args: object, **kwargs: object) -> None:
            started.append(list(argv))
            super().__init__(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(subprocess, "Popen", Popen)
    built = topology.build(topology.new_prefix("dnosys"), kind="tun")
    try:
        assert topology.get_sysctl(built.director, "net.ipv4.ip_forward") == "1"
        assert built.router is not None
        assert topology.get_sysctl(built.router, "net.ipv4.conf.lan0.rp_filter") == "0"
    finally:
        topology.teardown(built)
    procps = {"sysctl", "pgrep", "pkill", "ps", "kill", "pidof"}
    assert started, "the build started no command at all: the recording is broken"
    assert not [argv for argv in started if procps & {a.rsplit("/", 1)[-1] for a in argv}]


def test_a_failing_lab_command_says_what_it_wrote_to_stderr(lab: topology.Lab) -> None:
    with pytest.raises(topology.CommandFailed) as failed:
        lab.run(lab.client, ["ls", "/nonexistent-dir"])
    message = str(failed.value)
    assert message.startswith("`ip netns exec")
    assert "ls /nonexistent-dir` failed with exit status 2" in message
    assert "No such file or directory" in message


def test_readme_lab_commands_work_in_order(tmp_path: Path) -> None:
    """README's lab section, command by command: `lab up`, a real server straight,
    `lab up --daemon` on the lab that is up, the VIP through the director, `list -n`
    with the socket the README names, `lab down`."""
    name = topology.new_prefix("dreadme")
    dirctl = venv_program("dirctl")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    try:
        up = run(dirctl, "lab", "up", "--name", name)
        assert up.returncode == 0, up.stderr
        assert run("ip", "netns", "exec", f"{name}-client", "curl", "-sS", "-m", "3",
                   "http://198.18.0.2/").stdout == "rs1 198.18.0.2:80\n"  # fmt: skip
        again = run(dirctl, "lab", "up", "--name", name)
        assert again.returncode == 1 and "--daemon" in again.stderr
        daemon = run(dirctl, "lab", "up", "--name", name, "--daemon")
        assert daemon.returncode == 0, daemon.stderr + daemon.stdout
        answers = {
            run("ip", "netns", "exec", f"{name}-client", "curl", "-sS", "-m", "3",
                "http://203.0.113.5/").stdout.split(" ")[0]
            for _ in range(4)
        }  # fmt: skip
        assert answers == {"rs1", "rs2"}
        socket = f"/run/director-lab/{name}/control.sock"
        listed = run("ip", "netns", "exec", f"{name}-director", dirctl, "--socket", socket,
                     "list", "-n")  # fmt: skip
        assert listed.returncode == 0 and "TCP  203.0.113.5:80 rr" in listed.stdout, listed
        assert run(dirctl, "lab", "up", "--name", name, "--daemon").returncode == 0  # no-op
    finally:
        down = run(dirctl, "lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not [n for n in _namespaces() if n.startswith(name)]
