"""The control socket's wire format, and the client side of it.

One connection carries one request and one response, each a JSON object on one line
(newline-terminated, UTF-8)::

    request:  {"version": 1, "command": "add-service", "args": {...}}
    response: {"version": 1, "ok": true, "result": ..., "error": "", "fault": ""}

``fault`` says whose fault a failure is, as h11 does: ``"caller"`` for a bad request
(the operator's error: dirctl exits 2) and ``"daemon"`` for a failure inside the daemon.

Operations travel as ``args`` made by ``encode_op`` and are rebuilt, with every field
type-checked, by ``decode_op``, so the daemon applies the very ops dirctl parsed.
"""

from __future__ import annotations

import json
import re
import socket
import types
from array import array
from dataclasses import asdict, fields, is_dataclass
from itertools import accumulate
from typing import Any, Union, get_args, get_origin, get_type_hints

from director.ctl.ops import OP_NAMES, OPS, Op
from director.model.config import ConfigError

VERSION = 1
DEFAULT_SOCKET = "/run/director/control.sock"
MAX_MESSAGE = 16 * 1024 * 1024  # the client's bound on one response line
# No message of the protocol nests deeper than a handful of levels (a snapshot: the
# services, one service, its real servers, one of them, its counters).  Anything deeper
# is refused before it is parsed: json's decoder recurses once per level and a request
# of 200,000 "[" would end in RecursionError, not in a ValueError anyone expects.
MAX_DEPTH = 32


class DaemonUnreachable(Exception):
    """Nothing answers on the control socket (dirctl exits 3)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"cannot reach directord at {path} ({reason}); "
            "is it running? try: systemctl start directord"
        )
        self.path = path


class RequestRefused(ConfigError):
    """The daemon refused the request: the operator's error (dirctl exits 2)."""


class DaemonFailed(Exception):
    """The daemon failed while handling a valid request, or answered nonsense."""


# --- messages -----------------------------------------------------------------------


def encode_request(command: str, args: dict[str, Any] | None = None) -> bytes:
    message = {"version": VERSION, "command": command, "args": args or {}}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def encode_response(
    ok: bool, result: Any = None, error: str = "", fault: str = ""
) -> dict[str, Any]:
    return {"version": VERSION, "ok": ok, "result": result, "error": error, "fault": fault}


def dump_message(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def load_message(data: bytes) -> dict[str, Any]:
    """One JSON object from one line; ValueError (with a one-line reason) if it is not
    one, or if it nests deeper than MAX_DEPTH."""
    check_depth(data)
    try:
        message = json.loads(data.decode().strip())
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# Brackets count +1 (opening) and -1 (closing, 0xff as a signed byte); all else goes.
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def check_depth(data: bytes, limit: int = MAX_DEPTH) -> None:
    """ValueError if the JSON text ``data`` opens more than ``limit`` arrays and objects
    inside one another; brackets inside strings do not count.  Linear, and done in C
    (a regular expression, a translation, an accumulation) for a 4 MiB request."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # the common case: too few brackets to nest that deep
    brackets = _JSON_STRING.sub(b"", data).translate(_DEPTH_STEP, _NOT_A_BRACKET)
    if max(accumulate(array("b", brackets)), default=0) > limit:
        raise ValueError(f"nested deeper than {limit} levels")


# --- operations as args -------------------------------------------------------------


def encode_op(op: Op) -> tuple[str, dict[str, Any]]:
    """(command, args) for an operation."""
    return OP_NAMES[type(op)], asdict(op)


def decode_op(command: str, args: dict[str, Any]) -> Op:
    """The operation ``encode_op`` encoded; ConfigError on any malformed field."""
    cls = OPS.get(command)
    if cls is None:
        raise ConfigError(f"unknown command '{command}'")
    op = _build(cls, args, command)
    assert isinstance(op, cls)
    return op


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``, turning JSON lists into tuples."""
    origin = get_origin(tp)
    if is_dataclass(tp):
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _convert(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, where) for item in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items")
        return tuple(_convert(t, item, where) for t, item in zip(args, value, strict=True))
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer")
    if tp in (str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}")
    return value


# --- client -------------------------------------------------------------------------


def _exchange(path: str, request: bytes, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise DaemonUnreachable(path, exc.strerror or type(exc).__name__) from None
        except OSError as exc:
            raise DaemonUnreachable(path, exc.strerror or str(exc)) from None
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        size = 0
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_MESSAGE:
                raise DaemonFailed("response too large")
        return b"".join(chunks)


def request(
    socket_path: str, command: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> Any:
    """Send one request and return its result.

    Raises DaemonUnreachable (nobody listening), RequestRefused (the daemon said no:
    the message is its one-line reason) or DaemonFailed (anything else)."""
    try:
        data = _exchange(socket_path, encode_request(command, args), timeout)
    except TimeoutError:
        raise DaemonFailed(f"no answer from directord at {socket_path}") from None
    except OSError as exc:
        raise DaemonFailed(f"control socket {socket_path}: {exc}") from None
    if not data:
        raise DaemonFailed("directord closed the connection without answering")
    try:
        response = load_message(data)
    except ValueError:
        raise DaemonFailed("directord answered with a malformed message") from None
    if response.get("version") != VERSION:
        raise DaemonFailed(f"directord speaks protocol version {response.get('version')!r}")
    if response.get("ok"):
        return response.get("result")
    error = str(response.get("error") or "request failed")
    if response.get("fault") == "daemon":
        raise DaemonFailed(error)
    raise RequestRefused(error)
