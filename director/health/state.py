"""The rise/fall machine of one check: pure, one result in, new state (and whether the
real server changed side) out.

A real server starts ``unknown`` and counts as healthy then, as keepalived starts its
real servers alive: adding a check never takes a working server out before it has
failed ``fall`` times in a row.  ``up`` -> ``down`` after ``fall`` failures in a row,
``down`` -> ``up`` after ``rise`` successes in a row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

UNKNOWN = "unknown"
UP = "up"
DOWN = "down"


@dataclass(frozen=True, slots=True)
class CheckState:
    state: str = UNKNOWN
    successes: int = 0  # in a row
    failures: int = 0  # in a row
    checks: int = 0
    last_error: str = ""
    since: float = 0.0  # time of the last transition (or of the start)

    @property
    def healthy(self) -> bool:
        return self.state != DOWN


def observe(
    current: CheckState, ok: bool, error: str, rise: int, fall: int, now: float
) -> tuple[CheckState, bool]:
    """Count one check result; return the new state and whether ``healthy`` changed
    or the state left ``unknown`` (a transition worth logging)."""
    if ok:
        successes, failures = current.successes + 1, 0
    else:
        successes, failures = 0, current.failures + 1
    state = current.state
    if state == DOWN:
        if successes >= rise:
            state = UP
    elif failures >= fall:
        state = DOWN
    elif state == UNKNOWN and ok:
        state = UP
    changed = state != current.state
    new = replace(
        current,
        state=state,
        successes=successes,
        failures=failures,
        checks=current.checks + 1,
        last_error="" if ok else error,
        since=now if changed else current.since,
    )
    return new, changed
