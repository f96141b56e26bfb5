"""Who may call what: bearer tokens, kept only as sha256 hashes, compared in constant time, never logged.

Why hashes: a memory dump or a debug log of this process then holds nothing that opens the API. Why a cookie only
for reading: the pages' EventSource and <img> requests cannot send a header, but a cookie that could authorise a
write would let any other site's form POST on the operator's behalf (CSRF); writes need the Authorization header.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re

from fastapi import HTTPException, Request

from linesight.config.ui import AuthConfig
from linesight.errors import ConfigError

log = logging.getLogger(__name__)

COOKIE = "linesight_token"
MIN_TOKEN = 16
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _from_line(line: str, where: str) -> bytes:
    hashed = _HASHED.match(line)
    if hashed:
        return bytes.fromhex(hashed.group(1))
    if len(line) < MIN_TOKEN or any(c.isspace() for c in line):
        raise ConfigError(f"{where}: a token needs at least {MIN_TOKEN} characters and no spaces (make one with "
                          "`python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    return digest(line)


def load_token_hashes(cfg: AuthConfig) -> list[bytes]:
    """The configured tokens' sha256 digests; ConfigError names the file line or variable (never the token)."""
    hashes = []
    if cfg.tokens_file is not None:
        try:
            text = cfg.tokens_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"auth.tokens_file {cfg.tokens_file}: cannot read it ({exc})") from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if line:
                hashes.append(_from_line(line, f"{cfg.tokens_file}:{number}"))
        if not hashes:
            raise ConfigError(f"auth.tokens_file {cfg.tokens_file} holds no token; write one per line")
    if cfg.tokens_env is not None:
        value = os.environ.get(cfg.tokens_env, "").strip()
        if not value:
            raise ConfigError(f"auth.tokens_env: environment variable {cfg.tokens_env} is not set or empty")
        hashes.append(_from_line(value, f"auth.tokens_env ({cfg.tokens_env})"))
    log.info("ui auth: %d token(s) loaded", len(hashes))
    return hashes


class Access:
    """FastAPI dependencies `read` and `write`: 401 unless the route is open or a valid token comes with it."""

    def __init__(self, cfg: AuthConfig, hashes: list[bytes]) -> None:
        self._hashes = hashes
        self._read_open = cfg.read_open
        self._inspect_open = cfg.open_inspect

    def _valid(self, token: str | None) -> bool:
        if not token:
            return False
        got = digest(token)
        return any(hmac.compare_digest(got, h) for h in self._hashes)  # all compared: no early exit on a match

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
        if self._read_open or self._valid(self._bearer(request)) or self._valid(request.cookies.get(COOKIE)):
            return
        raise self._refuse("reading")

    def inspect(self, request: Request) -> None:
        """POST /api/v1/inspect: open with auth.open_inspect, else the header (never the cookie: CSRF)."""
        if self._inspect_open or self._valid(self._bearer(request)):
            return
        raise self._refuse("inspecting")
