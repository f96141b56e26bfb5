"""Who may call what: bearer tokens, kept only as sha256 hashes, compared in constant time, never logged.

Why hashes: a memory dump or a debug log of this process then holds nothing that opens the API. Why a cookie only
for reading: the pages' EventSource and <img> requests cannot send a header, but a cookie that could authorise a
write would let any other site's form POST on the operator's behalf (CSRF); writes need the Authorization header.
Why names: a token may be given a name (`anna:TOKEN`), and what is done with it is recorded under that name (the
`by` of feedback), so the record says who, not just "someone with a token".
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request

from linesight.config.ui import AuthConfig
from linesight.errors import ConfigError

log = logging.getLogger(__name__)

COOKIE = "linesight_token"
MIN_TOKEN = 16
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_NAMED = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):(.*)$")


@dataclass(frozen=True)
class Known:
    """One configured token: its sha256 digest and the name it was given (None: unnamed)."""

    digest: bytes
    name: str | None


@dataclass(frozen=True)
class Writer:
    """Who a write comes from: the token's name, None for an unnamed token."""

    name: str | None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _from_line(line: str, where: str) -> Known:
    """`TOKEN`, `sha256:<hex>`, `NAME:TOKEN` or `NAME:sha256:<hex>` (a name: letters, digits, `_ . @ -`)."""
    named = None if _HASHED.match(line) else _NAMED.match(line)
    name, secret = (named.group(1), named.group(2)) if named else (None, line)
    if name == "sha256":
        raise ConfigError(f"{where}: a sha256: line needs the token's 64 hex digits (sha256sum of the token)")
    hashed = _HASHED.match(secret)
    if hashed:
        return Known(bytes.fromhex(hashed.group(1)), name)
    if len(secret) < MIN_TOKEN or any(c.isspace() for c in secret):
        raise ConfigError(f"{where}: a token needs at least {MIN_TOKEN} characters and no spaces (make one with "
                          "`python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    return Known(digest(secret), name)


def load_tokens(cfg: AuthConfig) -> list[Known]:
    """The configured tokens' sha256 digests and names; ConfigError names the file line or variable (never the
    token)."""
    tokens = []
    if cfg.tokens_file is not None:
        try:
            text = cfg.tokens_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"auth.tokens_file {cfg.tokens_file}: cannot read it ({exc})") from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if line:
                tokens.append(_from_line(line, f"{cfg.tokens_file}:{number}"))
        if not tokens:
            raise ConfigError(f"auth.tokens_file {cfg.tokens_file} holds no token; write one per line")
    if cfg.tokens_env is not None:
        value = os.environ.get(cfg.tokens_env, "").strip()
        if not value:
            raise ConfigError(f"auth.tokens_env: environment variable {cfg.tokens_env} is not set or empty")
        tokens.append(_from_line(value, f"auth.tokens_env ({cfg.tokens_env})"))
    names = sorted({t.name for t in tokens if t.name is not None})
    log.info("ui auth: %d token(s) loaded%s", len(tokens), f", named {', '.join(names)}" if names else "")
    return tokens


class Access:
    """FastAPI dependencies `read`, `inspect` and `write`: 401 unless the route is open or a valid token comes
    with it."""

    def __init__(self, cfg: AuthConfig, tokens: list[Known]) -> None:
        self._tokens = tokens
        self._read_open = cfg.read_open
        self._inspect_open = cfg.open_inspect

    def _match(self, token: str | None) -> Known | None:
        if not token:
            return None
        got = digest(token)
        found = None
        for known in self._tokens:  # all compared: no early exit on a match
            if hmac.compare_digest(got, known.digest):
                found = known
        return found

    @staticmethod
    def _bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _refuse(self, what: str) -> HTTPException:
        return HTTPException(401, f"{what} needs a token: send the header 'Authorization: Bearer TOKEN' "
                                  "(tokens: auth.tokens_file / auth.tokens_env of the UI config)",
                             headers={"WWW-Authenticate": "Bearer"})

    def read(self, request: Request) -> None:
        """Read-only routes: open when auth.read_open, else a token in the header or the pages' cookie."""
        if self._read_open or self._match(self._bearer(request)) or self._match(request.cookies.get(COOKIE)):
            return
        raise self._refuse("reading")

    def inspect(self, request: Request) -> None:
        """POST /api/v1/inspect: open with auth.open_inspect, else the header (never the cookie: CSRF)."""
        if self._inspect_open or self._match(self._bearer(request)):
            return
        raise self._refuse("inspecting")

    def write(self, request: Request) -> Writer:
        """Every write (commands to a station): always the header, never the cookie (CSRF), never open."""
        known = self._match(self._bearer(request))
        if known is None:
            raise self._refuse("this action")
        return Writer(known.name)
