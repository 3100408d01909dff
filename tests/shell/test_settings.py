"""directord's settings: command line over the TOML file over the defaults; anything
wrong is a ConfigError (exit 2) before the daemon touches the host."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from director.model.config import ConfigError
from director.shell.daemon import Settings, _parser, parse_command, parse_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "director.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_spec_paths(tmp_path: Path) -> None:
    settings = parse_settings(["--config", str(write(tmp_path, ""))])
    assert settings.control_socket == Path("/run/director/control.sock")
    assert settings.rules == Path("/etc/director/rules")
    assert settings.state_dir == Path("/var/lib/director")
    assert (settings.queue_policy, settings.on_stop, settings.supervise) == ("hold", "remove", True)


def test_the_file_sets_and_the_command_line_wins(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'rules = "/tmp/r"\nqueue-num = 3\non_stop = "keep"\n'
        "[tcp_timeouts]\ntime_wait = 5\n[sysctl]\nexpire_nodest_conn = 1\n",
    )
    settings = parse_settings(["--config", str(config), "--queue-num", "7", "--no-supervise"])
    assert settings.rules == Path("/tmp/r")
    assert settings.queue_num == 7
    assert settings.on_stop == "keep"
    assert settings.tcp_timeouts == {"TIME_WAIT": 5}
    assert settings.sysctl == {"expire_nodest_conn": "1"}
    assert settings.supervise is False


@pytest.mark.parametrize(
    "text",
    [
        "no_such_setting = 1\n",
        'queue_policy = "sometimes"\n',
        "[tcp_timeouts]\nno_such_state = 5\n",
        "conn_table_memory = 0\n",
        "[sysctl]\nsecure_tcp = 7\n",
        'control_group = "no-such-group-here"\n',
        "this is not toml\n",
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        parse_settings(["--config", str(write(tmp_path, text))])


def test_settings_are_plain_data() -> None:
    assert Settings().conn_table_memory == 256


def test_help_documents_every_option_and_every_toml_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    undocumented = [a.option_strings for a in _parser()._actions if not a.help]
    assert undocumented == []
    for f in fields(Settings):
        assert f"\n  {f.name} = " in text or f"[{f.name}]" in text, f.name
    for name in ("TIME_WAIT", "SYN_RECV", "expire_nodest_conn", "am_droprate"):
        assert name in text
    assert "--remove-hooks" in text


def test_remove_hooks_is_a_command_not_a_setting(tmp_path: Path) -> None:
    assert parse_command(["--config", str(write(tmp_path, "")), "--remove-hooks"])[1] is True
    assert parse_command(["--config", str(write(tmp_path, ""))])[1] is False
    with pytest.raises(ConfigError, match="remove_hooks"):
        parse_settings(["--config", str(write(tmp_path, "remove_hooks = true\n"))])


@pytest.mark.parametrize(
    ("text", "named", "reason"),
    [
        ('queue_num = "three"\n', "queue_num", "must be an integer, not a string ('three')"),
        ("queue_num = true\n", "queue_num", "must be an integer, not true/false"),
        ("conn_table_memory = 1.5\n", "conn_table_memory", "must be an integer, not a float"),
        ("supervise = 1\n", "supervise", "must be true or false, not an integer (1)"),
        ("rules = 7\n", "rules", "must be a path (a string), not an integer (7)"),
        ('on_stop = ["keep"]\n', "on_stop", "must be a string, not an array"),
        ("tcp_timeouts = 5\n", "tcp_timeouts", "must be a table, not an integer (5)"),
        ('[tcp_timeouts]\ntime_wait = "5"\n', "tcp_timeouts.time_wait", "must be an integer"),
        ("[sysctl]\nsecure_tcp = [1]\n", "sysctl.secure_tcp", "not an array"),
        ("[sysctl]\n[sysctl.nested]\na = 1\n", "sysctl.nested", "not a table"),
        ("no_such_setting = 1\n", "no_such_setting", "unknown setting"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_key_and_reason(
    tmp_path: Path, text: str, named: str, reason: str
) -> None:
    """Before, a wrong type went into the settings as it was and failed later: a string
    queue number inside the worker, a list for on_stop as "must be one of"."""
    with pytest.raises(ConfigError) as err:
        parse_settings(["--config", str(write(tmp_path, text))])
    message = str(err.value)
    assert named in message and reason in message and "\n" not in message, message


def test_directord_exits_2_on_a_bad_value_and_says_why(tmp_path: Path) -> None:
    """The real program, as systemd runs it: exit status 2 and one line naming the key
    (it stops before touching the host, so no root is needed)."""
    config = write(tmp_path, 'queue_num = "three"\n')
    done = subprocess.run(
        [str(Path(sys.executable).parent / "directord"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "queue_num must be an integer" in lines[0], done.stderr


def test_toml_booleans_and_numbers_make_sysctl_text(tmp_path: Path) -> None:
    config = write(tmp_path, "[sysctl]\nexpire_nodest_conn = true\nsloppy_tcp = false\n"
                             "am_droprate = 20\nsecure_tcp = \"1\"\n")  # fmt: skip
    settings = parse_settings(["--config", str(config)])
    assert settings.sysctl == {
        "expire_nodest_conn": "1",
        "sloppy_tcp": "0",
        "am_droprate": "20",
        "secure_tcp": "1",
    }


@pytest.mark.parametrize("workers", ["0", "17", "-1"])
def test_workers_out_of_range_are_refused(tmp_path: Path, workers: str) -> None:
    """1 to 16 (MAX_WORKERS: the shards are cut by at most 4 address bits)."""
    with pytest.raises(ConfigError, match="workers must be 1 to 16"):
        parse_settings(["--config", str(write(tmp_path, "")), "--workers", workers])


@pytest.mark.parametrize(("workers", "highest"), [(1, 65534), (2, 65532), (4, 65528), (16, 65504)])
def test_every_workers_queues_must_exist(tmp_path: Path, workers: int, highest: int) -> None:
    """Worker i takes queues queue_num + 2i and the next; the last must be 65535 at most
    (NFQUEUE numbers are 16 bits: --queue-num takes 0 to 65535)."""
    config = str(write(tmp_path, ""))
    base = ["--config", config, "--workers", str(workers)]
    assert parse_settings([*base, "--queue-num", str(highest)]).queue_num == highest
    with pytest.raises(ConfigError, match=f"queue_num must be 0 to {highest} "):
        parse_settings([*base, "--queue-num", str(highest + 1)])


def test_workers_in_the_file_and_on_the_command_line(tmp_path: Path) -> None:
    config = str(write(tmp_path, "workers = 4\nqueue_num = 65528\n"))
    settings = parse_settings(["--config", config])
    assert (settings.workers, settings.queue_num) == (4, 65528)
    assert parse_settings(["--config", config, "--workers", "2"]).workers == 2
    with pytest.raises(ConfigError, match="queue_num"):
        parse_settings(["--config", str(write(tmp_path, "workers = 5\nqueue_num = 65528\n"))])
    with pytest.raises(ConfigError, match="workers must be an integer"):
        parse_settings(["--config", str(write(tmp_path, 'workers = "4"\n'))])


def test_the_default_is_one_worker_per_cpu(tmp_path: Path) -> None:
    """SPEC §2: ``--workers N`` (verdict worker processes; default one per CPU), at most
    the 16 the shards have queues for."""
    cpus = len(os.sched_getaffinity(0))
    assert parse_settings(["--config", str(write(tmp_path, ""))]).workers == min(cpus, 16)


def test_directord_exits_2_on_too_many_workers(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "directord"), "--config", str(write(tmp_path, "")),
         "--workers", "17"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "workers must be 1 to 16" in lines[0], done.stderr
