"""``dirctl realserver up|status|down`` on a host of its own (a fresh namespace with a
veth uplink): up prepares it, a second up changes nothing, down leaves the host exactly
as it was (addresses, links, every net.ipv4.conf sysctl) with no decapsulator left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from director.lab import topology
from director.lab.daemon import venv_program

VIP, VIP2 = "203.0.113.5", "198.51.100.7"


@pytest.fixture
def host() -> Iterator[str]:
    name = topology.new_prefix("drsh")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
            ["ip", "addr", "add", "198.18.0.2/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "peer0", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *argv], check=True)
        for dev in ("all", "eth0"):  # strict: up must relax it
            topology.set_sysctl(name, f"net.ipv4.conf.{dev}.rp_filter", "1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "exec", name, venv_program("dirctl"), "realserver", "down"],
                       capture_output=True)  # fmt: skip
        topology._kill_namespace_pids(name)
        subprocess.run(["ip", "netns", "del", name], check=True)


def dirctl(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, venv_program("dirctl"), "realserver", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def snapshot(ns: str) -> dict[str, object]:
    def run(*argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    links = {(x["ifname"], tuple(x["flags"])) for x in json.loads(run("ip", "-j", "link"))}
    addrs = {
        (x["ifname"], a["local"], a["prefixlen"])
        for x in json.loads(run("ip", "-j", "addr"))
        for a in x.get("addr_info", [])
    }
    sysctls = run("grep", "-r", "^", "/proc/sys/net/ipv4/conf/").splitlines()
    return {"links": links, "addrs": addrs, "sysctls": sorted(sysctls)}


def decapsulators(ns: str) -> list[str]:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    found = []
    for pid in pids.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "director.realserver.decap" in cmdline:
            found.append(cmdline)
    return found


def sysctl(ns: str, key: str) -> str:
    return topology.get_sysctl(ns, key)


@pytest.mark.parametrize(("method", "extra"), [("dr", ()), ("tun", ("--decap", "userspace"))])
def test_up_status_down_leaves_the_host_as_it_was(
    host: str, method: str, extra: tuple[str, ...]
) -> None:
    before = snapshot(host)
    done = dirctl(host, "up", "--vip", VIP, "--vip", VIP2, "--method", method, *extra)
    assert done.returncode == 0, done.stderr
    after_up = snapshot(host)
    dev = "lo" if method == "dr" else "dirtun0"
    assert {(dev, VIP, 32), (dev, VIP2, 32)} <= after_up["addrs"]  # type: ignore[operator]
    assert sysctl(host, "net.ipv4.conf.all.arp_ignore") == "1"
    assert sysctl(host, "net.ipv4.conf.all.arp_announce") == "2"
    assert sysctl(host, "net.ipv4.conf.all.rp_filter") == "2"
    if method == "tun":
        assert sysctl(host, "net.ipv4.conf.dirtun0.rp_filter") == "0"
        assert len(decapsulators(host)) == 1
    else:
        assert sysctl(host, "net.ipv4.conf.eth0.rp_filter") == "2"

    again = dirctl(host, "up", "--vip", VIP, "--vip", VIP2, "--method", method, *extra)
    assert again.returncode == 0 and "nothing to change" in again.stdout, again
    assert snapshot(host) == after_up
    assert len(decapsulators(host)) == (1 if method == "tun" else 0)

    shown = json.loads(dirctl(host, "status", "--json").stdout)
    assert shown["up"] and shown["method"] == method
    assert shown["vips"] == {VIP: dev, VIP2: dev}
    if method == "tun":
        assert shown["decap"]["running"] is True
    text = dirctl(host, "status").stdout
    assert f"vip {VIP}: on {dev}" in text, text

    done = dirctl(host, "down")
    assert done.returncode == 0, done.stderr
    assert snapshot(host) == before
    assert decapsulators(host) == []
    assert json.loads(dirctl(host, "status", "--json").stdout) == {"up": False}
    assert dirctl(host, "down").returncode == 0  # idempotent


def test_what_the_host_had_before_is_left_alone(host: str) -> None:
    subprocess.run(["ip", "netns", "exec", host, "ip", "addr", "add", f"{VIP}/32", "dev", "lo"],
                   check=True)  # fmt: skip
    topology.set_sysctl(host, "net.ipv4.conf.all.arp_ignore", "2")
    before = snapshot(host)
    assert dirctl(host, "up", "--vip", VIP, "--method", "dr").returncode == 0
    assert sysctl(host, "net.ipv4.conf.all.arp_ignore") == "2"  # stricter: kept
    assert dirctl(host, "down").returncode == 0
    assert snapshot(host) == before


def test_a_killed_decapsulator_is_reported_and_restarted_by_up(host: str) -> None:
    assert (
        dirctl(host, "up", "--vip", VIP, "--method", "tun", "--decap", "userspace").returncode == 0
    )
    pid = json.loads(dirctl(host, "status", "--json").stdout)["decap"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while decapsulators(host) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "NOT RUNNING" in dirctl(host, "status").stdout
    done = dirctl(host, "up", "--vip", VIP, "--method", "tun", "--decap", "userspace")
    assert done.returncode == 0 and "start the IPIP decapsulator" in done.stdout, done
    assert len(decapsulators(host)) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("up", "--vip", "203.0.113.300", "--method", "dr"),
        ("up", "--vip", VIP, "--method", "nat"),
        ("up", "--vip", VIP, "--method", "tun", "--decap", "sometimes"),
        ("up", "--vip", VIP, "--method", "dr", "--decap", "userspace"),
        ("up", "--method", "dr"),
        ("up", "--vip", "224.0.0.5", "--method", "dr"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    host: str, args: tuple[str, ...]
) -> None:
    before = snapshot(host)
    done = dirctl(host, *args)
    assert done.returncode == 2, done
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("dirctl: "), done
    assert snapshot(host) == before


def test_changing_method_needs_down_first(host: str) -> None:
    assert dirctl(host, "up", "--vip", VIP, "--method", "dr").returncode == 0
    done = dirctl(host, "up", "--vip", VIP, "--method", "tun")
    assert done.returncode == 2 and "down" in done.stderr, done
