"""`dirctl lab demo --method ha` as a person runs it: two directors with the real
keepalived, the master killed mid-download, the dead one back as the backup.
(`lab up --kind ha` and `lab down` are tests/netns/test_netns_ha.py's fixture.)"""

from __future__ import annotations

import re
import subprocess

from director.lab import ha
from director.lab.daemon import venv_program
from tests.skips import unavailable


def test_demo_ha_shows_the_master_die_and_come_back_as_the_backup() -> None:
    if ha.missing_program():
        unavailable("keepalived is not installed (.ci/install-deps test)")
    done = subprocess.run([venv_program("dirctl"), "lab", "demo", "--method", "ha",
                           "--requests", "4"], capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    prefix = re.search(r"== HA lab (\S+):", out)
    assert prefix is not None, out
    assert re.search(r"dir1: master  \(master sync daemon \(mcast=int0, syncid=7", out), out
    assert re.search(r"dir2: backup  \(backup sync daemon \(mcast=int0, syncid=7", out), out
    assert "dir1 dies: kill -9 of its directord and its keepalived" in out
    assert re.search(r"dir2 is master [\d.]+ s after the kill", out), out
    assert re.search(r"dir1: backup  \(backup sync daemon", out.split("comes back")[1]), out
    assert "curl exit 0, 1048576 bytes of 1048576" in out, out
    assert "failed" not in out, out
    learnt = out.split("learnt from dir2)")[1]
    assert learnt.count("203.0.113.10:") >= 4, out  # the new requests, synced to dir1
    assert f"== lab {prefix.group(1)} removed" in out
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix.group(1) not in listed
