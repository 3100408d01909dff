"""Every example in rules/ loads, and saving it back gives the same configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.core.engine import Director
from director.ctl.ipvsadm import format_save, load_rules

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "rules").glob("*.rules"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_round_trips(path: Path) -> None:
    config = load_rules(path.read_text())
    assert config.services
    assert load_rules(format_save(config)) == config
    Director.check(config)  # nothing the data path cannot carry
    Director().configure(config)


def test_there_are_examples_for_each_method() -> None:
    text = "".join(p.read_text() for p in EXAMPLES)
    for flag in (" -m ", " -g ", " -i ", "-A -f "):
        assert flag in text, flag
