"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class LinesightError(Exception):
    """Base for every error caused by bad input (config, images, bundles, commands)."""


class ConfigError(LinesightError):
    """Invalid configuration; the message names the file, YAML path and line."""


class BundleError(LinesightError):
    """A bundle is missing, tampered with, truncated or of an unknown schema."""


class DataError(LinesightError):
    """A dataset folder or image cannot be used."""


def validation_problems(exc, whole: str) -> str:
    """A pydantic ValidationError as one line: `field.path: message; ...` (`whole` names a model-level error)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors())
