"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class LinesightError(Exception):
    """Base for every error caused by bad input (config, images, bundles, commands).

    `field` optionally names the station-config setting at fault as a dotted path from the top of the
    file (e.g. `outputs.mqtt.tls.ca_file`): check-config and start-up map it to the YAML line.
    """

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        self.field = field

    @property
    def detail(self) -> str:
        """The message without the field prefix (for callers that print the field themselves)."""
        return super().__str__()

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}" if self.field else self.detail


class ConfigError(LinesightError):
    """Invalid configuration; the message names the file, YAML path and line."""


class BundleError(LinesightError):
    """A bundle is missing, tampered with, truncated or of an unknown schema."""


class DataError(LinesightError):
    """A dataset folder or image cannot be used."""


def validation_problems(exc, whole: str, prefix: str = "") -> str:
    """A pydantic ValidationError as one line: `prefix.field.path: message; ...` (`whole` names a model-level
    error). The one formatter for models built from code and flags; YAML files get file:line (config.loader)."""
    return "; ".join(f"{'.'.join([prefix, *map(str, e['loc'])] if prefix else map(str, e['loc'])) or whole}: "
                     f"{e['msg']}" for e in exc.errors(include_url=False))
