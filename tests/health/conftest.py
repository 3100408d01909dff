"""A network namespace of its own for the checker tests.

The checkers are tested against real servers on real sockets, so they run inside a
namespace this fixture creates (198.18.0.2 and 2001:db8:2::2 on its ``lo``, SPEC §3)
and removes: the
test thread enters it with setns(2) (a thread's network namespace is its own; threads
it starts inherit it) and comes back after.  Needs root; skipped otherwise (failed under CI=true).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from director.lab.topology import new_prefix, setns
from tests.skips import unavailable

ADDR = "198.18.0.2"
ADDR6 = "2001:db8:2::2"


@pytest.fixture
def in_netns() -> Iterator[str]:
    if os.geteuid() != 0:
        unavailable("checker tests need root (they run in a network namespace)")
    name = new_prefix("dhc")
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{ADDR}/32", "dev", "lo"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{ADDR6}/128", "dev", "lo", "nodad"],
                       check=True)  # fmt: skip
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            setns(target, name)
        finally:
            os.close(target)
        try:
            yield ADDR
        finally:
            setns(home)
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def in_netns6(in_netns: str) -> str:
    """The same namespace, by its IPv6 address."""
    return ADDR6
