"""The kernel selftest's check (tools/testing/selftests/net/netfilter/ipvs.sh): the
client sends 32 random bytes to VIP:8080 with socat; a socat listener on the real
server writes what it receives to a file, which must hold the same 32 bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.skips import unavailable

PORT = 8080
DATALEN = 32


def need_socat() -> None:
    if shutil.which("socat") is None:
        unavailable("socat is not installed (make deps)")


def ns_exec(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


class Listener:
    """``socat -u TCP-LISTEN:8080 -> file`` in namespace ``ns``, for one connection."""

    def __init__(
        self, ns: str, outfile: Path, port: int = PORT, bind: str | None = None, six: bool = False
    ) -> None:
        self.ns, self.outfile, self.port = ns, outfile, port
        address = f"TCP-LISTEN:{port},reuseaddr" + (f",bind={bind}" if bind else "")
        self.proc = subprocess.Popen(
            ns_exec(ns, "timeout", "15", "socat", "-u", "-6" if six else "-4", address,
                    f"OPEN:{outfile},creat,trunc"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self._listening():
            assert self.proc.poll() is None, f"socat exited: {self._err()}"
            assert time.monotonic() < deadline, f"socat does not listen on :{port} in {ns}"
            time.sleep(0.02)

    def _listening(self) -> bool:
        out = subprocess.run(ns_exec(self.ns, "ss", "-Hltn", f"sport = :{self.port}"),
                             capture_output=True, text=True).stdout  # fmt: skip
        return bool(out.strip())

    def _err(self) -> str:
        return self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""

    def received(self, timeout: float = 10.0) -> bytes:
        """Wait for the listener to finish its one connection; what it wrote."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
        return self.outfile.read_bytes() if self.outfile.exists() else b""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def send(
    client_ns: str, vip: str, data: bytes, port: int = PORT
) -> subprocess.CompletedProcess[bytes]:
    """``socat -u STDIN TCP:VIP:PORT < data`` from the client (2 s at most, as ipvs.sh);
    ``-6`` and ``TCP6:[VIP]:PORT`` for an IPv6 VIP."""
    target = f"TCP6:[{vip}]:{port}" if ":" in vip else f"TCP:{vip}:{port}"
    family = "-6" if ":" in vip else "-4"
    return subprocess.run(
        ns_exec(client_ns, "timeout", "2", "socat", "-u", family, "STDIN", target),
        input=data,
        capture_output=True,
        timeout=15,
    )


def transfer(client_ns: str, server_ns: str, vip: str, workdir: Path, *,
             port: int = PORT, bind: str | None = None) -> tuple[bytes, bytes, str]:  # fmt: skip
    """Send 32 random bytes from the client to VIP:port; (sent, received, client's stderr)."""
    data = os.urandom(DATALEN)
    listener = Listener(server_ns, workdir / f"received-{server_ns}-{port}", port, bind,
                        six=":" in vip)  # fmt: skip
    try:
        done = send(client_ns, vip, data, port)
        got = listener.received()
    finally:
        listener.close()
    return data, got, f"exit {done.returncode}: {done.stderr.decode(errors='replace').strip()}"
