"""The rise/fall machine: a script of results in, states out."""

from __future__ import annotations

import pytest

from director.health.state import DOWN, UNKNOWN, UP, CheckState, observe


def run(results: str, rise: int, fall: int) -> list[str]:
    state = CheckState()
    seen = []
    for t, char in enumerate(results):
        state, _ = observe(state, char == "+", "boom", rise, fall, float(t))
        seen.append(state.state)
    return seen


@pytest.mark.parametrize(
    ("results", "rise", "fall", "states"),
    [
        ("+", 1, 1, [UP]),
        ("-", 1, 1, [DOWN]),
        ("--", 1, 2, [UNKNOWN, DOWN]),
        ("+-+-", 1, 2, [UP, UP, UP, UP]),  # never two failures in a row
        ("+--", 1, 2, [UP, UP, DOWN]),
        ("---++", 2, 3, [UNKNOWN, UNKNOWN, DOWN, DOWN, UP]),
        ("---+-++", 2, 3, [UNKNOWN, UNKNOWN, DOWN, DOWN, DOWN, DOWN, UP]),
    ],
)
def test_rise_and_fall(results: str, rise: int, fall: int, states: list[str]) -> None:
    assert run(results, rise, fall) == states


def test_transition_reported_once_with_error_and_time() -> None:
    state = CheckState()
    state, moved = observe(state, False, "refused", 1, 2, 1.0)
    assert not moved and state.healthy
    state, moved = observe(state, False, "refused", 1, 2, 2.0)
    assert moved and not state.healthy and state.last_error == "refused" and state.since == 2.0
    state, moved = observe(state, False, "refused", 1, 2, 3.0)
    assert not moved and state.failures == 3 and state.checks == 3
