"""The FTP helper end to end (net/netfilter/ipvs/ip_vs_ftp.c): a real FTP server
(pyftpdlib) behind NAT, curl as the client through the director.  Passive mode by
PASV (the 227 reply rewritten from the real server's address to the VIP's, one of
another length, so every later packet of the control connection has its sequence
numbers moved) and by EPSV, active mode by PORT (the server's data connection from
its port 20 leaving as the VIP:20, as the kernel expects it: ip_vs_ftp_in's
vport - 1), an upload, and a download under way while directord restarts with
``--on-stop keep`` (the control connection's deltas and the data connection come
back from the restart dump)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from labtools import running

from director.lab import topology
from director.lab.daemon import Daemon

SIZE = 2 << 20
PASSIVE = "50000-50009"

# The FTP server (argv: its folder): anonymous, may write, passive ports 50000-50009,
# and its active data connections from port 20 (pyftpdlib's own take any port; an FTP
# server binds port 20, which is what ip_vs_ftp_in's entry expects).
SERVER = """
import socket, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP
from pyftpdlib.servers import FTPServer

class Port20(ActiveDTP):
    def create_socket(self, family, type):
        super().create_socket(family, type)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def connect_af_unspecified(self, addr, source_address=None):
        return super().connect_af_unspecified(addr, (source_address[0], 20))

auth = DummyAuthorizer()
auth.add_anonymous(sys.argv[1], perm="elradfmw")
FTPHandler.authorizer = auth
FTPHandler.active_dtp = Port20
FTPHandler.passive_ports = range(50000, 50010)
server = FTPServer((sys.argv[2], 21), FTPHandler)
print("listening", flush=True)
server.serve_forever(timeout=0.2)
"""


@contextmanager
def ftp_lab(
    tmp_path_factory: pytest.TempPathFactory, kind: str
) -> Iterator[tuple[topology.Lab, Path]]:
    """A NAT lab (``kind``: nat or nat6) with the FTP server on its first real server."""
    built = topology.build(kind=kind)
    root = tmp_path_factory.mktemp("ftp")
    (root / "blob").write_bytes(hashlib.sha256(b"ftp").digest() * (SIZE // 32))
    rs = built.real_servers[0]
    server = subprocess.Popen(
        built.exec_argv(rs.netns, [sys.executable, "-c", SERVER, str(root),
                                   "::" if built.family == 6 else "0.0.0.0"]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        yield built, root
    finally:
        server.kill()
        server.wait()
        topology.teardown(built)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[topology.Lab, Path]]:
    with ftp_lab(tmp_path_factory, "nat") as built:
        yield built


def rules(lab: topology.Lab) -> str:
    rs = lab.real_servers[0]
    vip, rip = topology.addr_port(lab.vip, 21), topology.addr_port(rs.addr, 21)
    return f"-A -t {vip} -s rr\n-a -t {vip} -r {rip} -m\n"


def curl(lab: topology.Lab, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    argv = ["curl", "-sS", "--max-time", str(timeout), *args]
    return subprocess.run(lab.exec_argv(lab.client, argv), capture_output=True,
                          timeout=timeout + 10)  # fmt: skip


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def daemon(lab: tuple[topology.Lab, Path], tmp_path: Path) -> Iterator[Daemon]:
    built, _ = lab
    with running(Daemon(built, tmp_path / "director")) as d:
        assert d.dirctl("restore", input=rules(built)).returncode == 0
        yield d


MODES = {
    # curl's options: PASV (227, rewritten; curl takes its address, not the control
    # connection's), EPSV (229, the port only), PORT (active)
    "pasv": ("--disable-epsv", "--no-ftp-skip-pasv-ip"),
    "epsv": (),
    "port": ("-P", "-", "--disable-eprt"),
}


@pytest.mark.parametrize("mode", MODES)
def test_download(lab: tuple[topology.Lab, Path], daemon: Daemon, mode: str) -> None:
    """2 MB by each mode; the listing shows the data connection's entry (to the
    passive port, or from port 20) beside the control connection's."""
    built, root = lab
    got = curl(built, "-v", *MODES[mode], f"ftp://{built.vip}/blob")
    assert got.returncode == 0, got.stderr.decode()
    if mode != "port":  # the data connection went to the VIP
        assert f"Connecting to {built.vip} ({built.vip}) port 5000" in got.stderr.decode()
    assert (len(got.stdout), digest(got.stdout)) == (SIZE, digest((root / "blob").read_bytes()))
    listed = daemon.dirctl("list", "-n", "-c").stdout
    rs = built.real_servers[0].addr
    data_port = ":20" if mode == "port" else ":5000"
    lines = [line for line in listed.splitlines() if f"{rs}{data_port}" in line]
    # Its packets went through it: it left LISTEN (TIME_WAIT once curl is done).
    assert lines and "LISTEN" not in lines[0], listed


def test_upload(lab: tuple[topology.Lab, Path], daemon: Daemon, tmp_path: Path) -> None:
    """An upload (STOR over a passive data connection) arrives whole."""
    built, root = lab
    src = tmp_path / "up.bin"
    src.write_bytes(hashlib.sha256(b"up").digest() * (SIZE // 32))
    got = curl(built, "--disable-epsv", "-T", str(src), f"ftp://{built.vip}/up.bin")
    assert got.returncode == 0, got.stderr.decode()
    assert digest((root / "up.bin").read_bytes()) == digest(src.read_bytes())


def test_transfer_survives_a_restart(lab: tuple[topology.Lab, Path], tmp_path: Path) -> None:
    """A PASV download read at 400 kB/s (some 5 s) is under way while directord stops
    with --on-stop keep and starts again: the data connection and the control
    connection (whose later packets need the 227's delta) are restored from the dump,
    the transfer ends whole and curl's closing exchange on the control connection
    (226, QUIT) goes through."""
    built, root = lab
    workdir = tmp_path / "director"
    first = Daemon(built, workdir, ["--on-stop", "keep"])
    first.start()
    try:
        assert first.dirctl("restore", input=rules(built)).returncode == 0
        argv = ["curl", "-sS", "--max-time", "60", "--disable-epsv", "--limit-rate", "400k",
                "-o", "/dev/stdout", f"ftp://{built.vip}/blob"]  # fmt: skip
        client = subprocess.Popen(built.exec_argv(built.client, argv), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)  # fmt: skip
        try:
            time.sleep(1.5)
            assert client.poll() is None, "the transfer ended before the restart"
            assert first.stop() == 0, first.log()
            second = Daemon(built, workdir, ["--on-stop", "keep"])
            second.start()
            try:
                out, err = client.communicate(timeout=60)
                assert client.returncode == 0, err.decode()
                assert digest(out) == digest((root / "blob").read_bytes())
                listed = second.dirctl("list", "-n", "-c").stdout
                assert f"{built.real_servers[0].addr}:21" in listed, listed
            finally:
                second.stop()
                second.kill()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    finally:
        first.kill()
        cleanup = Daemon(built, tmp_path / "cleanup")
        cleanup.start()
        cleanup.stop()


@pytest.fixture(scope="module")
def lab6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[topology.Lab, Path]]:
    with ftp_lab(tmp_path_factory, "nat6") as built:
        yield built


@pytest.mark.parametrize("mode", ["epsv", "eprt"])
def test_download_ipv6(lab6: tuple[topology.Lab, Path], tmp_path: Path, mode: str) -> None:
    """IPv6 (the nat6 lab): EPSV's 229 names only the port, the client connects to
    [VIP6]:port through the entry; EPRT |2|client|port| lets the server's data
    connection from port 20 through, leaving as [VIP6]:20 (ip_vs_ftp_in for AF_INET6)."""
    built, root = lab6
    with running(Daemon(built, tmp_path / "director")) as d:
        assert d.dirctl("restore", input=rules(built)).returncode == 0
        args = ("-P", "-") if mode == "eprt" else ()
        got = curl(built, "-g", *args, f"ftp://[{built.vip}]/blob")
        assert got.returncode == 0, got.stderr.decode()
        assert digest(got.stdout) == digest((root / "blob").read_bytes())
        listed = d.dirctl("list", "-n", "-c").stdout
        data_port = "]:20" if mode == "eprt" else "]:5000"
        lines = [line for line in listed.splitlines() if data_port in line
                 and built.real_servers[0].addr in line]  # fmt: skip
        assert lines and "LISTEN" not in lines[0], listed
