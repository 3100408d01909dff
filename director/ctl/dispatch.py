"""The daemon's side of the control socket: one request in, one response out.

``dispatch`` decodes a request, turns a change into ``apply(target.config, op)`` and
one ``target.commit(new)`` (so each change is atomic: validated whole, applied whole),
and answers ``list``, ``save`` and ``zero``.  ``restore`` is ipvsadm -R onto the current
table, all or nothing.  It never raises: every failure becomes an error response whose
``fault`` says whether the caller or the daemon is to blame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from director.ctl.health_ops import apply_health, prune
from director.ctl.health_rules import VERBS as HEALTH_VERBS
from director.ctl.health_rules import parse_words
from director.ctl.ipvsadm import format_save, restore
from director.ctl.ops import OPS, ServiceKey, apply, canonical_key
from director.ctl.protocol import (
    VERSION,
    decode_op,
    dump_message,
    encode_response,
    load_message,
)
from director.ctl.report import CONN_PAGE
from director.ctl.target import ControlTarget
from director.model.config import ConfigError

log = logging.getLogger(__name__)

Handler = Callable[[ControlTarget, dict[str, Any]], Any]


def _list(target: ControlTarget, args: dict[str, Any]) -> Any:
    """ipvsadm -L; with conns, one page of -Lc from ``offset`` (at most CONN_PAGE
    entries, fewer if ``limit`` says so): the answer's conns_next is the next offset."""
    offset, limit = args.get("offset", 0), args.get("limit", CONN_PAGE)
    for name, value in (("offset", offset), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"list: {name} must be a whole number")
    return target.snapshot(
        conns=bool(args.get("conns", False)), offset=offset, limit=min(max(limit, 1), CONN_PAGE)
    )


def _save(target: ControlTarget, args: dict[str, Any]) -> Any:
    return format_save(target.config, checks=bool(args.get("checks", False)))


def _zero(target: ControlTarget, args: dict[str, Any]) -> Any:
    """ipvsadm -Z [service]: "No such service" if the service is not there."""
    raw = args.get("service")
    key: ServiceKey | None = None
    if raw is not None:
        if not (isinstance(raw, list | tuple) and len(raw) == 3 and isinstance(raw[2], int)):
            raise ConfigError("zero: service must be [protocol, address, port]")
        key = canonical_key((str(raw[0]), str(raw[1]), int(raw[2])))
        if all(svc.key != key for svc in target.config.services):
            raise ConfigError("No such service")
    target.zero(key)
    return None


def _restore(target: ControlTarget, args: dict[str, Any]) -> Any:
    text = args.get("text")
    if not isinstance(text, str):
        raise ConfigError("restore: text must be a string")
    target.commit(restore(target.config, text))
    return None


def _which(target: ControlTarget, args: dict[str, Any]) -> Any:
    """dirctl which PROTO CLIENT:PORT VIP:PORT: the real server a new connection gets."""
    try:
        protocol = str(args["protocol"]).lower()
        client = (str(args["client"][0]), int(args["client"][1]))
        virtual = (str(args["virtual"][0]), int(args["virtual"][1]))
        mark = int(args.get("mark", 0))
    except (KeyError, TypeError, ValueError, IndexError):
        raise ConfigError(
            "which: needs protocol, client [addr, port], virtual [addr, port]"
        ) from None
    if protocol not in ("tcp", "udp"):
        raise ConfigError(f"which: unknown protocol {protocol!r} (tcp or udp)")
    return target.which(protocol, client, virtual, mark)


def _sysctls(target: ControlTarget, args: dict[str, Any]) -> Any:
    """dirctl sysctl [NAME=VALUE ...]: IPVS's sysctls, as settings of the daemon."""
    changes = args.get("set", {})
    if not isinstance(changes, dict):
        raise ConfigError("sysctl: set must be an object")
    try:
        return target.sysctls({str(k): str(v) for k, v in changes.items()})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _sync_daemon(command: str) -> Handler:
    """start-daemon, stop-daemon (ipvsadm --start-daemon / --stop-daemon) and daemon
    (ipvsadm -L --daemon)."""

    def handler(target: ControlTarget, args: dict[str, Any]) -> Any:
        return target.sync_daemon(command, args)

    return handler


def _change(command: str) -> Handler:
    def handler(target: ControlTarget, args: dict[str, Any]) -> Any:
        # prune: deleting a service or real server deletes its checks.
        target.commit(prune(apply(target.config, decode_op(command, args))))
        return None

    return handler


def _health_change(command: str) -> Handler:
    """add-check, edit-check, delete-check, set-health: args {"words": [...]}, the
    options as dirctl was given them (director.ctl.health_rules parses them)."""

    def handler(target: ControlTarget, args: dict[str, Any]) -> Any:
        words = args.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ConfigError(f"{command}: words must be a list of strings")
        target.commit(apply_health(target.config, parse_words(command, words)))
        return None

    return handler


def _checks(target: ControlTarget, args: dict[str, Any]) -> Any:
    """dirctl list --checks: every check, its real server's state and last result."""
    return target.checks()


HANDLERS: dict[str, Handler] = {
    "list": _list,
    "save": _save,
    "zero": _zero,
    "restore": _restore,
    "which": _which,
    "sysctl": _sysctls,
    "checks": _checks,
    "start-daemon": _sync_daemon("start"),
    "stop-daemon": _sync_daemon("stop"),
    "daemon": _sync_daemon("list"),
    **{name: _change(name) for name in OPS},
    **{name: _health_change(name) for name in HEALTH_VERBS},
}


def dispatch(target: ControlTarget, message: dict[str, Any]) -> dict[str, Any]:
    """Answer one decoded request message with a response message."""
    if not isinstance(message, dict) or message.get("version") != VERSION:
        version = message.get("version") if isinstance(message, dict) else None
        return encode_response(
            False, error=f"unsupported protocol version {version!r}", fault="caller"
        )
    command = message.get("command")
    args = message.get("args", {})
    handler = HANDLERS.get(command) if isinstance(command, str) else None
    if handler is None:
        return encode_response(False, error=f"unknown command {command!r}", fault="caller")
    if not isinstance(args, dict):
        return encode_response(False, error="args must be an object", fault="caller")
    try:
        return encode_response(True, result=handler(target, args))
    except ConfigError as exc:
        return encode_response(False, error=str(exc), fault="caller")
    except Exception as exc:  # the daemon must answer, whatever went wrong
        log.exception("control request %r failed", command)
        return encode_response(False, error=f"internal error: {exc}", fault="daemon")


def dispatch_bytes(target: ControlTarget, data: bytes) -> bytes:
    """One request line in, one response line out: what the socket server calls.
    Never raises: a request that is not a message (not JSON, nested too deep) gets a
    one-line refusal, an answer that cannot be encoded a one-line failure."""
    try:
        message = load_message(data)
    except ValueError as err:
        return dump_message(encode_response(False, error=f"bad request: {err}", fault="caller"))
    response = dispatch(target, message)
    try:
        return dump_message(response)
    except (TypeError, ValueError) as err:
        log.exception("the answer to %r cannot be encoded", message.get("command"))
        return dump_message(encode_response(False, error=f"internal error: {err}", fault="daemon"))
