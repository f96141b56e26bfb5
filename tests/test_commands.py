"""Command validation: one strict model per command; every gate has a case where it must say no."""
from __future__ import annotations

import pytest

from linesight.config.outputs import MQTT_COMMANDS
from linesight.daemon.commands import MODELS, Dispatcher, Feedback, Part, Pause, Reload, Resume


def dispatcher(**kw) -> tuple[Dispatcher, list]:
    seen: list = []
    handlers = {m: (lambda cmd, seen=seen: seen.append(cmd) or {"ok": type(cmd).__name__})
                for m in (Reload, Pause, Resume, Feedback, Part)}
    return Dispatcher(handlers, **kw), seen


def test_names_are_the_configs():
    assert tuple(MODELS) == MQTT_COMMANDS


@pytest.mark.parametrize("name,payload,why", [
    ("reload", {"rollback": "false"}, "rollback: Input should be a valid boolean"),
    ("reload", {"rollback": 1}, "rollback: Input should be a valid boolean"),
    ("reload", {"bundle": "/m/a.zip", "rollback": True}, "not both"),
    ("reload", {"bundle": ["/m/a.zip"]}, "bundle: Input should be a valid string"),
    ("reload", {"bundel": "/m/a.zip"}, "bundel: Extra inputs are not permitted"),
    ("pause", {"now": True}, "now: Extra inputs are not permitted"),
    ("feedback", {"seq": "12", "label": "NG"}, "seq: Input should be a valid integer"),
    ("feedback", {"seq": 12, "label": "Ok"}, "label: Value error, label 'Ok': use 'good' or a defect type"),
    ("feedback", {"seq": 12, "label": 5}, "label: Input should be a valid string"),
    ("feedback", {"label": "OK"}, "seq: Field required"),
    ("feedback", {"seq": 12, "label": "OK", "source": "cli"}, "source: Input should be 'mqtt' or 'ui'"),
    ("feedback", {"seq": 12, "label": "OK", "run": "7"}, "run: Input should be a valid integer"),
    ("part", {"part_id": ""}, "part_id: String should have at least 1 character"),
    ("part", {"part_id": "x" * 201}, "part_id: String should have at most 200 characters"),
    ("selfdestruct", {}, "unknown command 'selfdestruct'"),
])
def test_bad_payloads_are_refused_with_the_reason(name, payload, why):
    d, seen = dispatcher()
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        d(name, payload)
    assert seen == []


def test_good_payloads_reach_their_handler_typed():
    d, seen = dispatcher()
    assert d("reload", {"id": "r1", "rollback": True}) == {"ok": "Reload"}
    assert d("feedback", {"id": 7, "seq": 12, "label": "NG", "note": "burr"}) == {"ok": "Feedback"}
    assert d("feedback", {"seq": 13, "label": "crack", "by": "anna"}) == {"ok": "Feedback"}
    assert d("feedback", {"seq": 14, "label": "OK", "run": 7, "source": "ui"}) == {"ok": "Feedback"}
    assert seen[0] == Reload(id="r1", rollback=True) and seen[1].seq == 12 and seen[1].label == "NG"
    assert (seen[2].source, seen[2].run, seen[3].source, seen[3].run) == ("mqtt", None, "ui", 7)


def test_a_station_can_enable_only_some_commands():
    d, seen = dispatcher(allowed=("pause", "resume", "feedback"))
    with pytest.raises(ValueError, match="'reload' is not enabled on this station"):
        d("reload", {})
    assert d("pause", {}) == {"ok": "Pause"} and len(seen) == 1


def test_the_published_command_schemas_are_the_models():
    """docs/commands.schema.json is what integrators code against: it must be the models, descriptions included."""
    import json
    from pathlib import Path

    from linesight.daemon.commands import schema_json

    committed = (Path(__file__).resolve().parents[1] / "docs" / "commands.schema.json").read_text()
    assert committed == schema_json(), ("docs/commands.schema.json is stale: regenerate it with "
                                        "daemon.commands.schema_json() (see its docstring)")
    doc = json.loads(committed)
    assert set(doc["commands"]) == set(MQTT_COMMANDS)
    assert doc["commands"]["feedback"]["properties"]["seq"]["description"].startswith("The verdict's seq")
    assert doc["commands"]["reload"]["additionalProperties"] is False  # unknown keys are refused, as the models do
