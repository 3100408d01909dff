"""effective(): the table health makes of the intent, as a table of cases."""

from __future__ import annotations

from director.ctl.ipvsadm import format_save, load_rules
from director.health.effective import effective, quorum_states
from director.model.config import Config

SVC = ("tcp", "203.0.113.5", 80)
RS1, RS2 = ("198.18.0.2", 80), ("198.18.0.3", 8000)
BASE = """-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1
-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m -w 2
"""


def conf(*lines: str) -> Config:
    return load_rules(BASE + "".join(f"{line}\n" for line in lines))


def weights(config: Config) -> dict[tuple[str, int], int]:
    return {d.key: d.weight for d in config.services[0].dests}


CHECK = "# director-check -t 203.0.113.5:80 --type tcp"
SORRY = "# director-health -t 203.0.113.5:80 --sorry-server 198.18.0.9:80 -m"


def test_no_checks_is_the_intent_itself() -> None:
    config = conf()
    assert effective(config, {(SVC, RS1): False}) is config


def test_failed_server_quiesced_by_default() -> None:
    assert weights(effective(conf(CHECK), {(SVC, RS1): False})) == {RS1: 0, RS2: 2}


def test_failed_server_removed_when_asked() -> None:
    config = conf(CHECK + " --on-failure remove")
    assert weights(effective(config, {(SVC, RS2): False})) == {RS1: 1}


def test_own_check_overrides_service_default() -> None:
    config = conf(
        CHECK, "# director-check -t 203.0.113.5:80 -r 198.18.0.3:8000 --on-failure remove"
    )
    assert weights(effective(config, {(SVC, RS1): False, (SVC, RS2): False})) == {RS1: 0}


def test_unchecked_server_is_never_touched() -> None:
    config = conf("# director-check -t 203.0.113.5:80 -r 198.18.0.2:80")
    assert weights(effective(config, {(SVC, RS2): False})) == {RS1: 1, RS2: 2}


def test_sorry_server_only_when_all_down() -> None:
    config = conf(CHECK, SORRY)
    assert weights(effective(config, {(SVC, RS1): False})) == {RS1: 0, RS2: 2}
    down = {(SVC, RS1): False, (SVC, RS2): False}
    assert weights(effective(config, down)) == {RS1: 0, RS2: 0, ("198.18.0.9", 80): 1}


def test_quorum_with_hysteresis() -> None:
    config = conf(CHECK, SORRY + " --quorum 3 --hysteresis 1")
    one_down = {(SVC, RS1): False}
    assert quorum_states(config, one_down, {SVC: True}) == {SVC: True}  # 2 >= 3 - 1
    assert quorum_states(config, {(SVC, RS2): False}, {SVC: True}) == {SVC: False}  # 1 < 2
    # Once lost, it takes quorum + hysteresis (4) to come back: all up weighs only 3.
    assert quorum_states(config, {}, {SVC: False}) == {SVC: False}
    assert quorum_states(config, {}, {SVC: True}) == {SVC: True}


def test_health_never_reaches_the_saved_rules() -> None:
    config = conf(CHECK, SORRY)
    live = effective(config, {(SVC, RS1): False, (SVC, RS2): False})
    assert "198.18.0.9:80 -m -w" not in format_save(config)
    assert load_rules(format_save(config)) == config
    assert live.health == config.health
