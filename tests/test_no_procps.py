"""Nothing runs a procps program: a minimal Debian (debootstrap minbase, what
`make demo` and `make test` start from) has no procps, and a test that ran pgrep
failed there.  Every program director, its tests and its benchmark start is read from
the source: an argv list whose first word is one of procps's programs is refused
(/proc has what they read)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Debian 12's procps package: what it installs in /usr/bin and /usr/sbin.
PROCPS = ("free", "kill", "pgrep", "pidof", "pidwait", "pkill", "pmap", "ps", "pwdx",
          "skill", "slabtop", "snice", "sysctl", "tload", "top", "uptime", "vmstat", "w",
          "watch")  # fmt: skip
_NAMES = "|".join(PROCPS)
# An argv list, or a namespace helper's exec("...", ...): its first word.
_RUN = re.compile(r'(?:\[|\.exec\()\s*"(?:/usr/s?bin/)?(' + _NAMES + r')"\s*,')


def test_no_procps_program_is_started() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("director", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if _RUN.search(line) and path != Path(__file__).resolve()
    ]
    assert found == []


def test_the_check_sees_an_argv() -> None:
    assert _RUN.search('subprocess.run(["pgrep", "-P", "1"])')
    assert not _RUN.search('d.dirctl("sysctl", "x=1")')
    assert _RUN.search('director.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")')
