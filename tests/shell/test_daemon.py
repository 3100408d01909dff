"""The daemon's own logic, without root: a commit is all or nothing, a failed save at
SIGTERM still takes the hooks out, `dirctl sysctl` changes are kept for the next start,
and the loop's steps are guarded.  The hooks are the in-memory ones of tests/target.py,
made to fail on demand; tests/netns/test_netns_robust_control.py runs the same cases
against the real daemon and the kernel's iptables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from director.ctl.ipvsadm import format_save, load_rules
from director.model.config import Config
from director.shell.board import SlotKey
from director.shell.daemon import SYSCTL_FILE, Daemon, Settings
from director.shell.netfilter import HookError, selection
from tests.target import MemoryHooks, StaticRoutes, close, settings_in

RULES = "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1\n"
MORE = RULES + "-A -f 7 -s rr\n-a -f 7 -r 198.18.0.3:0 -m -w 1\n"


@dataclass
class FailingHooks(MemoryHooks):
    """In-memory hooks whose next ``fail`` syncs raise, as a failing iptables-restore
    does; ``removed`` counts the removals."""

    fail: int = 0
    removed: int = 0

    def sync(self, config: Config, slots: dict[SlotKey, int] | None = None) -> None:
        if self.fail:
            self.fail -= 1
            raise HookError("iptables-restore failed: injected")
        super().sync(config, slots)

    def remove(self) -> None:
        self.removed += 1
        super().remove()


class Closable:
    def __init__(self) -> None:
        self.closed = 0
        self.neighbours = self

    def close(self) -> None:
        self.closed += 1


def new_daemon(settings: Settings) -> Daemon:
    hooks = FailingHooks(queue=settings.queue_num, mark=settings.send_mark)
    return Daemon(settings, hooks=hooks, routes=StaticRoutes())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    settings = settings_in(tmp_path)
    settings.state_dir.mkdir()
    d = new_daemon(settings)
    d.commit(load_rules(RULES))
    yield d
    close(d)


def hooks_of(d: Daemon) -> FailingHooks:
    assert isinstance(d.hooks, FailingHooks)
    return d.hooks


def _services(d: Daemon) -> list[tuple[int, bytes, int]]:
    return sorted(svc.key for svc in d.director.services)


def test_a_failed_hook_change_changes_nothing(daemon: Daemon) -> None:
    """Before, the rules file was written and the core configured before the hooks
    were synced: a failing iptables-restore left a rules file and a table the hooks
    did not match."""
    hooks = hooks_of(daemon)
    before = (daemon.settings.rules.read_text(), _services(daemon), daemon.config)
    hooks.fail = 1
    with pytest.raises(HookError):
        daemon.commit(load_rules(MORE))
    assert (daemon.settings.rules.read_text(), _services(daemon), daemon.config) == before
    # The hooks were put back to what the running table needs.
    assert hooks.selected == selection(load_rules(RULES))
    daemon.commit(load_rules(MORE))  # and the same change goes through once it can
    assert daemon.settings.rules.read_text() == format_save(load_rules(MORE))
    assert len(_services(daemon)) == 2
    assert hooks.selected == selection(load_rules(MORE))


def test_a_failed_write_of_the_rules_file_undoes_the_hooks(daemon: Daemon) -> None:
    hooks = hooks_of(daemon)
    rules = daemon.settings.rules
    before = (rules.read_text(), _services(daemon), daemon.config)
    daemon.settings.rules = rules.parent / "in-the-way" / "rules"
    daemon.settings.rules.parent.write_text("a file where the folder should be")
    with pytest.raises(OSError):
        daemon.commit(load_rules(MORE))
    assert hooks.selected == selection(load_rules(RULES))
    assert (rules.read_text(), _services(daemon), daemon.config) == before


def test_sysctl_changes_are_kept_for_the_next_start(daemon: Daemon) -> None:
    answer = daemon.sysctls({"expire_nodest_conn": "yes", "am_droprate": "20"})
    assert answer["expire_nodest_conn"] is True
    daemon.sysctls({"am_droprate": "30"})
    kept = json.loads((daemon.settings.state_dir / SYSCTL_FILE).read_text())
    assert kept == {"expire_nodest_conn": "1", "am_droprate": "30"}
    # A new daemon (the settings' own sysctl say otherwise: the runtime change wins).
    settings = Settings(**{**vars(daemon.settings), "sysctl": {"am_droprate": "5"}})
    again = new_daemon(settings)
    assert again.director.sysctls.expire_nodest_conn is True
    assert again.director.sysctls.am_droprate == 30
    close(again)


def test_a_bad_sysctl_change_is_refused_whole_and_not_kept(daemon: Daemon) -> None:
    with pytest.raises(ValueError):
        daemon.sysctls({"sloppy_tcp": "1", "secure_tcp": "9"})
    assert daemon.director.sysctls.sloppy_tcp is False
    assert not (daemon.settings.state_dir / SYSCTL_FILE).exists()


def test_an_unusable_sysctl_file_is_reported_and_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_in(tmp_path)
    settings.state_dir.mkdir()
    (settings.state_dir / SYSCTL_FILE).write_text('{"secure_tcp": "9"}')
    d = new_daemon(settings)
    assert d.director.sysctls.secure_tcp == 0
    assert "not applied" in caplog.text
    close(d)


@pytest.mark.parametrize("on_stop", ["remove", "keep"])
def test_a_failed_save_at_sigterm_still_removes_the_hooks(daemon: Daemon, on_stop: str) -> None:
    """Before, an exception from the save skipped everything after it in the stop,
    the hooks' removal first: the queue held the services' traffic with no worker."""
    hooks = hooks_of(daemon)
    daemon.settings.on_stop = on_stop
    (daemon.settings.state_dir / "conns.json" / "in-the-way").mkdir(parents=True)
    daemon.stop_requested = True
    worker, control = Closable(), Closable()
    saved = daemon._shut_down([worker], control)  # type: ignore[arg-type]
    assert saved is False
    assert hooks.removed == 1
    assert worker.closed and control.closed  # the rest of the stop ran too
    assert daemon.loop_errors["save"] == 1


def test_a_saved_table_and_on_stop_keep_leave_the_hooks(daemon: Daemon) -> None:
    hooks = hooks_of(daemon)
    daemon.settings.on_stop = "keep"
    daemon.stop_requested = True
    assert daemon._shut_down([Closable()], Closable()) is True  # type: ignore[arg-type]
    assert hooks.removed == 0
    assert (daemon.settings.state_dir / "conns.json").exists()


def test_a_failing_step_is_counted_and_the_rest_goes_on(daemon: Daemon) -> None:
    ran = []

    def broken() -> None:
        raise RuntimeError("a bug")

    assert daemon._step("tick", broken) is False
    assert daemon._step("tick", lambda: ran.append(1)) is True
    assert daemon.loop_errors == {"tick": 1} and ran == [1]


def test_a_repeating_fault_is_logged_at_powers_of_ten(daemon: Daemon, caplog) -> None:
    def broken() -> None:
        raise RuntimeError("again")

    for _ in range(150):
        daemon._step("packets", broken)
    logged = [r.getMessage() for r in caplog.records if "packets failed" in r.getMessage()]
    assert logged == [f"packets failed ({n} times so far); going on" for n in (1, 10, 100)]
    assert daemon.loop_errors["packets"] == 150


def test_a_health_hand_off_that_cannot_sync_is_retried_by_the_tick(daemon: Daemon) -> None:
    hooks = hooks_of(daemon)
    hooks.selected = ({}, set())  # what a failed sync would leave unknown
    daemon._hooks_stale = True
    hooks.fail = 1
    assert daemon._step("hooks", daemon._sync_hooks) is False  # this tick: still failing
    assert daemon._hooks_stale
    assert daemon._step("hooks", daemon._sync_hooks) is True  # the next one
    assert not daemon._hooks_stale and hooks.selected == selection(load_rules(RULES))


class BrokenRoutes(StaticRoutes):
    def lookup(self, addr: str) -> None:
        raise OSError("netlink: no buffer space")


def test_a_failed_route_lookup_after_the_change_does_not_unmake_it(tmp_path: Path) -> None:
    """Before, the lookup came between the table's change and the configuration's:
    its exception reported a failed change that the table, the hooks and the rules
    file had all taken, and the daemon's own configuration had not."""
    settings = settings_in(tmp_path)
    hooks = FailingHooks(queue=settings.queue_num, mark=settings.send_mark)
    d = Daemon(settings, hooks=hooks, routes=BrokenRoutes())
    dr = "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -g -w 1\n"
    d.commit(load_rules(dr))
    assert format_save(d.config) == format_save(load_rules(dr))
    assert d.settings.rules.read_text() == format_save(load_rules(dr))
    assert d.loop_errors["routes"] == 1
    close(d)
