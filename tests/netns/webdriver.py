"""A real headless Chromium, driven over WebDriver's HTTP API (W3C WebDriver, served by
Debian's chromedriver), with the standard library only; run inside a lab namespace, so
the browser reaches what listens there (the daemon's --metrics-listen).

    webdriver.py PROFILE_DIR

One JSON command a line on stdin, one JSON answer a line on stdout ("ready" first):
``{"open": URL}``, ``{"eval": SCRIPT}`` (the script's return value, as
executeScript gives it), ``{"screenshot": PATH}`` (a PNG of the window).  End of input
ends the session, the browser and the driver.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

BROWSER = "/usr/bin/chromium"
# As root, in a namespace with no way out: no sandbox (it wants user namespaces), no
# GPU, and none of the browser's own traffic (updates, sync, QUIC probes).
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1800,1000",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Driver:
    def __init__(self, profile: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            ["chromedriver", f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not come up within 20 s")
            time.sleep(0.1)
        options = {"binary": BROWSER, "args": [*ARGS, f"--user-data-dir={profile}"]}
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.load(answer)["value"]

    def in_session(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def close(self) -> None:
        try:
            self.call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def main() -> None:
    driver = Driver(sys.argv[1])
    try:
        print(json.dumps("ready"), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if "open" in command:
                answer = driver.in_session("POST", "/url", {"url": command["open"]})
            elif "eval" in command:
                body = {"script": command["eval"], "args": []}
                answer = driver.in_session("POST", "/execute/sync", body)
            elif "screenshot" in command:
                png = base64.b64decode(driver.in_session("GET", "/screenshot"))
                with open(command["screenshot"], "wb") as out:
                    out.write(png)
                answer = len(png)
            else:
                raise ValueError(f"unknown command {command!r}")
            print(json.dumps(answer), flush=True)
    finally:
        driver.close()


if __name__ == "__main__":
    main()
