"""Issue 6: a restart drops no connection.  A 20 MB download through each of NAT, DR
and TUN is in flight while the daemon is stopped (SIGTERM, `--on-stop keep`: the
hooks hold the traffic and the connection table is saved) and started again (the
table is restored): the client gets every byte, in order."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import transfer

from director.lab import topology
from director.lab.daemon import Daemon

PORT = 8080
SIZE = 20 << 20


@pytest.fixture(scope="module", params=["nat", "dr", "tun"])
def method_lab(request: pytest.FixtureRequest) -> Iterator[topology.Lab]:
    built = topology.build(kind=request.param)
    try:
        yield built
    finally:
        topology.teardown(built)


def test_transfer_survives_a_restart(method_lab: topology.Lab, tmp_path: Path) -> None:
    lab = method_lab
    rs = lab.real_servers[0]
    blob = tmp_path / "blob"
    blob.write_bytes(hashlib.sha256(b"seed").digest() * (SIZE // 32))
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    flag = {"nat": "-m", "dr": "-g", "tun": "-i"}[rs.method]
    rules = f"-A -t {lab.vip}:{PORT} -s rr\n-a -t {lab.vip}:{PORT} -r {rs.addr}:{PORT} {flag}\n"
    workdir = tmp_path / "director"
    first = Daemon(lab, workdir, ["--on-stop", "keep"])
    first.start()
    try:
        assert first.dirctl("restore", input=rules).returncode == 0
        with transfer(lab, rs, blob, PORT) as client:
            assert first.stop() == 0, first.log()
            second = Daemon(lab, workdir, ["--on-stop", "keep"])
            second.start()
            try:
                out, _ = client.communicate(timeout=60)
                got, digest = out.split()
                assert (int(got), digest) == (SIZE, expected)
                # The connection the second daemon carried is its restored one.
                listed = second.dirctl("list", "-n", "-c").stdout
                assert f"{rs.addr}:{PORT}" in listed, listed
            finally:
                second.stop()
                second.kill()
    finally:
        first.kill()
        # --on-stop keep left the hooks: take them out as a plain stop would.
        cleanup = Daemon(lab, tmp_path / "cleanup")
        cleanup.start()
        cleanup.stop()
