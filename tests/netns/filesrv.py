"""A real server's file service for the netns tests (stdlib only), run in a lab
namespace as ``python filesrv.py --port P --directory D``.

GET serves the files of D (downloads through the director); POST reads the whole
body and answers with its SHA-256 and length (uploads, checked byte for byte).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import socket
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        left = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        received = 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            left -= len(chunk)
        body = f"{digest.hexdigest()} {received}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read the answers, not the log."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="")
    parser.add_argument("--directory", required=True)
    args = parser.parse_args(argv)
    handler = functools.partial(Handler, directory=args.directory)
    ThreadingHTTPServer.allow_reuse_address = True
    server_class = ThreadingHTTPServer
    if ":" in args.bind:  # --bind :: serves IPv6 (and IPv4, mapped)

        class Server6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = Server6
    with server_class((args.bind, args.port), handler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
