"""The shipped systemd units, run the way systemd 252 runs them, against the real
daemon (PID 1 here is not systemd, so the test plays its part).

- `systemctl start directord`: director-hooks.service first (After=/Requires=), whose
  start runs nothing, then directord's ExecStart=.
- `systemctl restart directord`: SIGTERM to the main process (KillMode=mixed), wait,
  directord's ExecStopPost= if any, ExecStart= again.  director-hooks.service is left
  alone: a StopWhenUnneeded= unit is stopped only when every unit requiring it is
  inactive with no job pending and no restart coming (src/core/unit.c,
  unit_is_unneeded), and directord keeps its restart job until it is up again.
- `systemctl stop directord`: SIGTERM, wait, ExecStopPost=; then nothing needs
  director-hooks.service, which is stopped: its ExecStop=.

The command lines are read from systemd/*.service; only the install paths in them
(the program, the control socket, the rules file, the state directory) are mapped into
the test's work directory.  A 20 MB NAT download is in flight across the restart and
must arrive whole; after the stop no hook, chain or ipset of director's is left.
"""

from __future__ import annotations

import configparser
import hashlib
import shlex
import subprocess
from pathlib import Path

from labtools import curl, ipset_names, iptables_save, transfer

from director.lab import topology
from director.lab.daemon import Daemon, venv_program

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED = "/usr/local/bin/directord"
PORT = 8080
SIZE = 20 << 20


def unit(name: str) -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    parsed.read_string((SYSTEMD / name).read_text())
    return parsed


def command_lines(name: str, key: str, d: Daemon) -> list[list[str]]:
    """The unit's ``key=`` lines (ExecStart, ExecStop, ...) as argv, its install paths
    replaced by ``d``'s; any other absolute path in them fails the test."""
    paths = {
        INSTALLED: venv_program("directord"),
        "/run/director/control.sock": str(d.socket_path),
        "/etc/director/rules": str(d.rules_path),
        "/var/lib/director": str(d.state_dir),
    }
    section = unit(name)["Service"]
    lines = [section[key]] if key in section and section[key].strip() else []
    argvs = []
    for line in lines:
        argv = [paths.get(word, word) for word in shlex.split(line.lstrip("-@:+!"))]
        strays = [word for word in argv if word.startswith("/") and word not in paths.values()]
        assert not strays, f"{name} {key}: map {strays} into the test"
        argvs.append(argv)
    return argvs


def start_directord(lab: topology.Lab, workdir: Path) -> Daemon:
    d = Daemon(lab, workdir)
    for argv in command_lines("director-hooks.service", "ExecStart", d):
        run_in_director(lab, argv)
    (start,) = command_lines("directord.service", "ExecStart", d)
    assert start[0] == venv_program("directord")
    d.extra_args = tuple(start[1:])  # after Daemon's own --config and paths: the unit's win
    d.start()
    return d


def stop_directord(d: Daemon) -> None:
    """SIGTERM to the main process, wait for it, then ExecStopPost=."""
    assert d.stop() == 0, d.log()
    for argv in command_lines("directord.service", "ExecStopPost", d):
        run_in_director(d.lab, argv)


def run_in_director(lab: topology.Lab, argv: list[str]) -> subprocess.CompletedProcess[str]:
    done = lab.run(lab.director, argv, check=False, timeout=60)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}: {done.stderr}"
    return done


def director_hooks(lab: topology.Lab) -> list[str]:
    rules = [line for line in iptables_save(lab).splitlines() if "DIRECTOR" in line]
    return rules + [name for name in ipset_names(lab) if name.startswith("director")]


def test_restart_keeps_a_transfer_and_stop_takes_the_hooks_out(
    lab: topology.Lab, tmp_path: Path
) -> None:
    rs = lab.real_servers[0]
    blob = tmp_path / "blob"
    blob.write_bytes(hashlib.sha256(b"unit").digest() * (SIZE // 32))
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    workdir = tmp_path / "director"
    first = start_directord(lab, workdir)
    second: Daemon | None = None
    try:
        rules = "".join(
            f"-A -t {lab.vip}:{port} -s rr\n-a -t {lab.vip}:{port} -r {rs.addr}:{port} -m\n"
            for port in (80, PORT)
        )
        assert first.dirctl("restore", input=rules).returncode == 0
        with transfer(lab, rs, blob, PORT) as client:
            # systemctl restart directord
            stop_directord(first)
            assert director_hooks(lab), "the hooks went with a restart"
            second = start_directord(lab, workdir)
            out, _ = client.communicate(timeout=60)
            got, digest = out.split()
            assert (int(got), digest) == (SIZE, expected)

        # The hooks unit's ExecStop refuses while a daemon answers: nothing changes.
        (remove,) = command_lines("director-hooks.service", "ExecStop", second)
        refused = lab.run(lab.director, remove, check=False, timeout=60)
        assert refused.returncode != 0 and "stop it first" in refused.stderr, refused
        assert curl(lab, f"http://{lab.vip}/").body.startswith("rs")

        # systemctl stop directord: then director-hooks.service is unneeded and stopped.
        stop_directord(second)
        assert director_hooks(lab), "a plain SIGTERM of the unit's daemon keeps the hooks"
        run_in_director(lab, remove)
        assert director_hooks(lab) == []
        # The VIP is the director's own address again: port 80 is refused at once.
        assert curl(lab, f"http://{lab.vip}/").code == 7
    finally:
        for d in (first, second):
            if d is not None:
                d.kill()
        # Whatever happened, leave no hooks for the module's other tests.
        cleanup = [venv_program("directord"), "--remove-hooks", "--control-socket", "/nonexistent"]
        lab.run(lab.director, cleanup, check=False)
