"""The one strict base of every config, manifest, command and message model: an unknown key is an error (a typo
never silently falls back to a default)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def moved_to(cls, key: str) -> str | None:
        """Where `key`, unknown here, lives now when an older layout had it (the loader says so instead of
        "unknown field"); None: nowhere."""
        return None
