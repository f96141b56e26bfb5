"""The daemon's commands: one strict model per command and one dispatch table, whatever the transport.

Transports only turn bytes into a JSON object; what a command may carry, and what it does, lives here. MQTT is
the one way in (`<base>/cmd/<name>`); the UI (`linesight ui`) checks a payload with the same model (`validated`)
before it publishes it there. Strict types: `{"rollback": "false"}` is refused, not read as true; unknown keys are
refused, not ignored.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from linesight.config.base import Strict
from linesight.config.outputs import MQTT_COMMANDS
from linesight.config.project import check_feedback_label
from linesight.errors import validation_problems


class Command(Strict):
    model_config = ConfigDict(strict=True, frozen=True)

    id: str | int | None = Field(None, description="Echoed in the reply, so the sender can match it")


class Reload(Command):
    bundle: str | None = Field(None, min_length=1, max_length=4096, description="Bundle to load; none: the "
                                                                                "configured path again")
    rollback: bool = Field(False, description="Go back to the model that ran before the last change")

    @model_validator(mode="after")
    def _one_action(self) -> Reload:
        if self.rollback and self.bundle is not None:
            raise ValueError("give either 'bundle' or 'rollback': true, not both")
        return self


class Pause(Command):
    pass


class Resume(Command):
    pass


class Feedback(Command):
    seq: int = Field(ge=1, description="The verdict's seq (seqs start at 1); refused unless this station gave it "
                                       "lately")
    label: str = Field(description="What the part really was: OK, NG, or the defect type it showed")
    by: str | None = Field(None, max_length=200, description="Who says so (recorded)")
    part_id: str | None = Field(None, max_length=200)
    run: int | None = Field(None, ge=0, description="The verdict's run: refused unless the seq is of this run (after "
                                                  "a restart seqs of another run may repeat)")
    note: str | None = Field(None, max_length=1000)
    source: Literal["mqtt", "ui"] = Field("mqtt", description="Where it was given (recorded): ui when the web "
                                                              "UI sent it")

    @field_validator("label")
    @classmethod
    def _known_label(cls, v: str) -> str:
        return check_feedback_label(v)


class Part(Command):
    part_id: str = Field(min_length=1, max_length=200, description="Id of the next part to arrive")


# the names are the config's MQTT_COMMANDS (config cannot import the daemon); a test keeps them one set
MODELS: dict[str, type[Command]] = {"reload": Reload, "pause": Pause, "resume": Resume, "feedback": Feedback,
                                    "part": Part}


def schema_json() -> str:
    """docs/commands.schema.json, what PLC and HMI integrators code against: every command's JSON Schema by name.
    `python -c "from linesight.daemon.commands import schema_json as s; print(s(), end='')" >
    docs/commands.schema.json`."""
    doc = {"title": "linesight station commands",
           "description": "Publish to <base>/cmd/<name>; the reply comes on <base>/cmd/<name>/reply (docs/daemon.md)",
           "commands": {n: m.model_json_schema() for n, m in MODELS.items()}}
    return json.dumps(doc, indent=2) + "\n"


def model_of(name: str) -> type[Command]:
    """The model of command `name`; ValueError naming the valid ones for any other name."""
    model = MODELS.get(name)
    if model is None:
        raise ValueError(f"unknown command {name[:64]!r}; valid: {', '.join(MODELS)}")
    return model


def validated(name: str, payload: dict) -> Command:
    """`payload` as command `name`; ValueError with the one-line reason when it is not one."""
    try:
        return model_of(name).model_validate(payload)
    except ValidationError as exc:
        raise ValueError(f"{name}: {validation_problems(exc, name)}") from None


class Dispatcher:
    """`dispatcher(name, payload)`: validate into the command's model, run its handler, return the result.
    Raises ValueError with a one-line reason for anything a sender got wrong."""

    def __init__(self, handlers: dict[type[Command], Callable[[Command], dict]],
                 allowed: tuple[str, ...] = MQTT_COMMANDS):
        self.handlers, self.allowed = handlers, allowed

    def __call__(self, name: str, payload: dict) -> dict:
        model = model_of(name)
        if name not in self.allowed:
            raise ValueError(f"command {name!r} is not enabled on this station (enabled: {', '.join(self.allowed)})")
        return self.handlers[model](validated(name, payload))
