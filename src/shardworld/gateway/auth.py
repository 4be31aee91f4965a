"""Signed, expiring player tokens, and the ``shardworld token`` command.

A token is two base64url parts (no padding) joined by a dot::

    base64url(claims JSON) "." base64url(HMAC-SHA256(secret, first part))

The claims are a compact JSON object: ``{"v":1,"pid":42,"iat":1700000000,"exp":1700003600,
"name":"ada"}`` (``pid`` the player id, ``iat`` / ``exp`` unix seconds). The game's login
service issues tokens with the secret it shares with the gateways; a gateway verifies them
without calling anyone. Pure: no I/O besides the command's own printing.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TOKEN_VERSION = 1
MAX_PLAYER_ID = (1 << 53) - 1
"""Player ids are 1 .. 2**53 - 1: they travel as msgpack integers, and a browser client
reads those as JavaScript numbers, which are exact only up to 2**53. 0 means "no player"
(the ``owner`` of an NPC)."""
MAX_NAME_LEN = 64
MAX_TOKEN_LEN = 1024
"""A HELLO's token field is at most 1024 characters (protocol v1)."""
SECRET_ENV = "SHARDWORLD_SECRET"

_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class AuthError(Exception):
    """A token was refused. ``reason`` says why, in a few words (safe to log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says."""

    player_id: int
    issued_at: int
    expires_at: int
    name: str = ""


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the token secret must not be empty")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise AuthError("malformed token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex rules these out
        raise AuthError("malformed token") from exc


def _sign(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, body.encode("ascii"), hashlib.sha256).digest())


def issue_token(
    secret: str | bytes,
    player_id: int,
    ttl_s: float,
    name: str = "",
    now: float | None = None,
) -> str:
    """A token for ``player_id``, valid for ``ttl_s`` seconds from ``now`` (unix time).

    Raises ValueError for an empty secret, a player id outside 1 .. 2**53 - 1, a ttl that is
    not positive, or a name longer than 64 characters.
    """
    key = _key(secret)
    if isinstance(player_id, bool) or not isinstance(player_id, int):
        raise ValueError("player_id must be an integer")
    if not 1 <= player_id <= MAX_PLAYER_ID:
        raise ValueError(f"player_id must be in 1..{MAX_PLAYER_ID}")
    if not (ttl_s > 0 and math.isfinite(ttl_s)):
        raise ValueError("ttl_s must be a finite number > 0")
    if len(name) > MAX_NAME_LEN:
        raise ValueError(f"name must be at most {MAX_NAME_LEN} characters")
    t = time.time() if now is None else now
    claims = {
        "v": TOKEN_VERSION,
        "pid": player_id,
        "iat": int(t),
        "exp": int(t + ttl_s),
        "name": name,
    }
    body = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return f"{body}.{_sign(key, body)}"


def _int_claim(claims: dict[str, object], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AuthError(f"bad claims: {name}")
    return value


def verify_token(secret: str | bytes, token: str, now: float) -> Claims:
    """The claims of a valid token, or :class:`AuthError` (bad format, bad signature,
    expired, player id out of range). The signature is compared in constant time."""
    key = _key(secret)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN:
        raise AuthError("malformed token")
    parts = token.split(".")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise AuthError("malformed token")
    body, sig = parts
    if not _B64URL.fullmatch(body) or not _B64URL.fullmatch(sig):
        raise AuthError("malformed token")
    # Comparing the canonical encodings also refuses a signature spelled differently.
    if not hmac.compare_digest(_sign(key, body), sig):
        raise AuthError("bad signature")
    try:
        claims = json.loads(_unb64(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuthError("malformed claims") from exc
    if not isinstance(claims, dict):
        raise AuthError("malformed claims")
    if claims.get("v") != TOKEN_VERSION:
        raise AuthError("unsupported token version")
    pid = _int_claim(claims, "pid")
    iat = _int_claim(claims, "iat")
    exp = _int_claim(claims, "exp")
    name = claims.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_LEN:
        raise AuthError("bad claims: name")
    if now >= exp:
        raise AuthError("expired")
    if not 1 <= pid <= MAX_PLAYER_ID:
        raise AuthError("player id out of range")
    return Claims(pid, iat, exp, name)


class TokenVerifier:
    """``verify_token`` with its secret and wall clock bound: one per gateway, shared by
    every connection."""

    __slots__ = ("_clock", "_key")

    def __init__(self, secret: str | bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = _key(secret)
        self._clock = clock

    def __call__(self, token: str) -> Claims:
        return verify_token(self._key, token, self._clock())


# --- the command --------------------------------------------------------------------------

_TOKEN_HELP = f"""\
Print a signed player token for the gateway (HMAC-SHA256, expiring).

The gateway accepts it in the HELLO message when it runs with the same secret. Use it to
test a gateway by hand, or from a login service's scripts; production logins issue tokens
with shardworld.gateway.auth.issue_token.

The secret comes from --secret or, better (it stays out of the shell history), from the
environment variable {SECRET_ENV}.

example:
  export {SECRET_ENV}=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
  shardworld token --player 42 --ttl 600 --name ada
"""


def _token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardworld token",
        description=_TOKEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--secret", help=f"the gateway's token secret (default: ${SECRET_ENV})")
    p.add_argument(
        "--player",
        type=int,
        required=True,
        metavar="ID",
        help=f"player id, 1..{MAX_PLAYER_ID}",
    )
    p.add_argument(
        "--ttl",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long the token stays valid (default 3600)",
    )
    p.add_argument("--name", default="", help=f"display name, up to {MAX_NAME_LEN} characters")
    return p


def token_main(argv: Sequence[str] | None = None) -> int:
    """``shardworld token``: print a token; returns the exit status (2 on a usage error)."""
    parser = _token_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, or argparse's own usage errors
        return exc.code if isinstance(exc.code, int) else 2
    secret = args.secret or os.environ.get(SECRET_ENV, "")
    if not secret:
        print(
            f"shardworld token: no secret: pass --secret or set {SECRET_ENV}",
            file=sys.stderr,
        )
        return 2
    try:
        token = issue_token(secret, args.player, args.ttl, name=args.name)
    except ValueError as exc:
        print(f"shardworld token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
