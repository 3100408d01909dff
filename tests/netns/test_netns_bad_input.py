"""Bad `dirctl` input exits 2 with a one-line reason and changes nothing (SPEC §2).

One seeded daemon serves the whole module (in a lab of the module's own): these
tests must leave its rules as they found them, and check exactly that.
"""

from __future__ import annotations

import pytest
from labtools import save

from director.lab.daemon import Daemon

BAD_COMMANDS = [
    ("add-service", "-t", "203.0.113.5:99999"),
    ("add-service", "-t", "not-an-address:80"),
    ("add-service", "-t", "203.0.113.6:80", "-s", "no-such-scheduler"),
    ("add-service", "-t", "203.0.113.5:80"),  # exists already
    ("add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.9:80", "-m", "-w", "-1"),
    ("add-server", "-t", "203.0.113.7:80", "-r", "198.18.0.9:80", "-m"),  # no such service
    ("edit-server", "-t", "203.0.113.5:80", "-r", "198.18.0.9:80", "-w", "2"),
    ("delete-service", "-t", "203.0.113.7:80"),
    ("set-timeout", "-5", "0", "0"),
]


@pytest.mark.parametrize("argv", BAD_COMMANDS, ids=" ".join)
def test_bad_input_exits_2_and_changes_nothing(
    shared_seeded: Daemon, argv: tuple[str, ...]
) -> None:
    d = shared_seeded
    before = save(d)
    timeouts = d.dirctl("list", "--timeout").stdout
    done = d.dirctl(*argv)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip() and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert save(d) == before
    assert d.dirctl("list", "--timeout").stdout == timeouts


def test_restore_with_one_bad_line_applies_nothing(shared_seeded: Daemon) -> None:
    d = shared_seeded
    before = save(d)
    rules = "-A -t 203.0.113.6:80 -s rr\n-a -t 203.0.113.6:80 -r 198.18.0.2:80 -m\n-Q bogus\n"
    done = d.dirctl("restore", input=rules)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "3" in done.stderr  # names the line
    assert save(d) == before
