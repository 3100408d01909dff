"""Every example in rules/ loads, and saving it back gives the same configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.core.engine import Director
from director.ctl.ipvsadm import format_save, load_rules
from director.model.config import Config

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


def test_the_ipv6_seed_is_the_seed_over_ipv6() -> None:
    """rules/seed-nat6.rules: SPEC §4's services with SPEC §3's IPv6 addresses, the
    same ports and methods as rules/seed-nat.rules; the lab's copy is the same."""
    from director.lab.lab import SEED_RULES6

    rules = Path(__file__).resolve().parents[2] / "rules"
    six = load_rules((rules / "seed-nat6.rules").read_text())
    four = load_rules((rules / "seed-nat.rules").read_text())
    assert load_rules(SEED_RULES6) == six

    def shape(config: Config) -> list[tuple[object, ...]]:
        return [(s.protocol, s.port, s.scheduler, [(d.port, d.method) for d in s.dests])
                for s in config.services]  # fmt: skip

    assert shape(six) == shape(four)
    assert {s.addr for s in six.services} == {"2001:db8:1::100"}
    assert {d.addr for s in six.services for d in s.dests} == {"2001:db8:2::2", "2001:db8:2::3"}
