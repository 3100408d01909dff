"""directord's settings: command line over the TOML file over the defaults; anything
wrong is a ConfigError (exit 2) before the daemon touches the host."""

from __future__ import annotations

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
