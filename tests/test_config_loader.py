"""Config loading: every problem must come back as `file:line: path: message`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from linesight.config.loader import format_path, load_model, load_model_from_text, parse_yaml
from linesight.errors import ConfigError, LinesightError

SRC = "station.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Camera(Strict):
    serial: str
    exposure_us: int
    gain: float = 0.0


class MqttOutput(Strict):
    type: Literal["mqtt"]
    host: str
    port: int = 1883
    password: str | None = None


class ZmqOutput(Strict):
    type: Literal["zmq"]
    endpoint: str


Output = Annotated[MqttOutput | ZmqOutput, Field(discriminator="type")]


class Roi(Strict):
    x: int
    y: int


class Station(Strict):
    name: str
    camera: Camera
    rois: list[Roi] = []
    outputs: list[Output] = []
    thresholds: dict[str, float] = {}


class WithToken(Strict):
    api_token: str

    @field_validator("api_token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        # Deliberately echoes the input, like careless validators do.
        if len(value) < 12:
            raise ValueError(f"token {value} is too short")
        return value


def _yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


VALID = _yaml(
    """
    name: line-3
    camera:
      serial: "40123456"
      exposure_us: ${EXPOSURE:-1500}
    rois:
      - {x: 1, y: 2}
      - x: 3
        y: 4
    outputs:
      - type: mqtt
        host: ${MQTT_HOST}
        port: ${MQTT_PORT}
        password: ${MQTT_PASSWORD}
      - type: zmq
        endpoint: tcp://*:5556
    thresholds:
      scratch: 0.5
    """
)


def _error(text: str, model: type[BaseModel] = Station, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_model_from_text(_yaml(text), model, SRC, env=env or {})
    return str(info.value)


def _problem_lines(message: str) -> list[str]:
    """The problem lines (everything after the header)."""
    header, *rest = message.splitlines()
    assert header.startswith(f"{SRC}: invalid configuration ("), header
    return rest


# --- happy path ------------------------------------------------------------------------------


def test_valid_config_with_env_substitution() -> None:
    env = {"MQTT_HOST": "broker.local", "MQTT_PORT": "8883", "MQTT_PASSWORD": "s3cret"}
    cfg = load_model_from_text(VALID, Station, SRC, env=env)
    assert isinstance(cfg, Station)
    assert cfg.camera.serial == "40123456"
    assert cfg.camera.exposure_us == 1500  # default used, then coerced from "1500"
    assert [(r.x, r.y) for r in cfg.rois] == [(1, 2), (3, 4)]
    mqtt, zmq = cfg.outputs
    assert isinstance(mqtt, MqttOutput) and isinstance(zmq, ZmqOutput)
    assert (mqtt.host, mqtt.port, mqtt.password) == ("broker.local", 8883, "s3cret")
    assert zmq.endpoint == "tcp://*:5556"
    assert cfg.thresholds == {"scratch": 0.5}


def test_line_map_records_keys_and_items() -> None:
    env = {"MQTT_HOST": "h", "MQTT_PORT": "1", "MQTT_PASSWORD": "p"}
    doc = parse_yaml(VALID, SRC, env)
    assert doc.lines[()] == 1
    assert doc.lines[("camera",)] == 2
    assert doc.lines[("camera", "exposure_us")] == 4
    assert doc.lines[("rois", 0)] == 6
    assert doc.lines[("rois", 1, "y")] == 8
    assert doc.lines[("outputs", 0, "port")] == 12
    assert doc.lines[("outputs", 1, "endpoint")] == 15
    assert doc.data["outputs"][0]["port"] == "1"  # still a string: pydantic coerces


def test_load_model_reads_file(tmp_path) -> None:
    path = tmp_path / "s1.yaml"
    path.write_text(VALID, encoding="utf-8")
    env = {"MQTT_HOST": "h", "MQTT_PORT": "1883", "MQTT_PASSWORD": "p", "EXPOSURE": "900"}
    cfg = load_model(path, Station, env=env)
    assert cfg.camera.exposure_us == 900
    assert cfg.outputs[0].port == 1883


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LS_TEST_SERIAL", "777")
    cfg = load_model_from_text(
        "name: a\ncamera: {serial: '${LS_TEST_SERIAL}', exposure_us: 1}\n", Station, SRC
    )
    assert cfg.camera.serial == "777"


# --- validation errors -----------------------------------------------------------------------


def test_type_error_names_file_line_and_path() -> None:
    msg = _error(
        """
        name: a
        camera:
          serial: x
          exposure_us: fast
        """
    )
    assert _problem_lines(msg) == [
        f"{SRC}:4: camera.exposure_us: Input should be a valid integer, "
        "unable to parse string as an integer (got 'fast')"
    ]


def test_missing_field_points_at_parent_mapping() -> None:
    msg = _error(
        """
        name: a
        camera:
          serial: x
        """
    )
    assert _problem_lines(msg) == [f"{SRC}:2: camera.exposure_us: Field required"]


def test_missing_top_level_field_points_at_document_start() -> None:
    msg = _error(
        """
        # station config
        name: a
        """
    )
    assert _problem_lines(msg) == [f"{SRC}:2: camera: Field required"]


def test_unknown_field_suggests_close_name() -> None:
    msg = _error(
        """
        name: a
        camera:
          serial: x
          exposure_us: 10
          gian: 2.0
        """
    )
    assert _problem_lines(msg) == [
        f"{SRC}:5: camera.gian: unknown field 'gian' (did you mean 'gain'?)"
    ]


def test_unknown_field_without_close_match_lists_allowed() -> None:
    msg = _error(
        """
        name: a
        camera: {serial: x, exposure_us: 1}
        zzz: 1
        """
    )
    assert _problem_lines(msg) == [
        f"{SRC}:3: zzz: unknown field 'zzz' (allowed: name, camera, rois, outputs, thresholds)"
    ]


def test_list_of_models_errors() -> None:
    msg = _error(
        """
        name: a
        camera: {serial: x, exposure_us: 1}
        rois:
          - {x: 1, y: 2}
          - x: 3
            y: down
          - x: 5
        """
    )
    assert _problem_lines(msg) == [
        f"{SRC}:6: rois[1].y: Input should be a valid integer, "
        "unable to parse string as an integer (got 'down')",
        f"{SRC}:7: rois[2].y: Field required",
    ]


def test_discriminated_union_errors_skip_the_tag() -> None:
    msg = _error(
        """
        name: a
        camera: {serial: x, exposure_us: 1}
        outputs:
          - type: zmq
            endpoint: tcp://a:1
          - type: mqtt
            host: b
            prot: 1883
          - type: mqtt
            port: many
          - type: kafka
        """
    )
    assert _problem_lines(msg) == [
        f"{SRC}:8: outputs[1].prot: unknown field 'prot' (did you mean 'port'?)",
        f"{SRC}:9: outputs[2].host: Field required",
        f"{SRC}:10: outputs[2].port: Input should be a valid integer, "
        "unable to parse string as an integer (got 'many')",
        f"{SRC}:11: outputs[3]: Input tag 'kafka' found using 'type' does not match any of "
        "the expected tags: 'mqtt', 'zmq'",
    ]


class Square(Strict):
    side: int


class Circle(Strict):
    radius: int


class Drawing(Strict):
    shape: Square | Circle  # plain (smart) union: pydantic reports every alternative


def test_plain_union_names_the_alternative() -> None:
    msg = _error("shape:\n  sid: 3\n", model=Drawing)
    assert _problem_lines(msg) == [
        f"{SRC}:1: shape.side: Field required [when read as Square]",
        f"{SRC}:1: shape.radius: Field required [when read as Circle]",
        f"{SRC}:2: shape.sid: unknown field 'sid' (did you mean 'side'?) [when read as Square]",
        f"{SRC}:2: shape.sid: unknown field 'sid' (allowed: radius) [when read as Circle]",
    ]


def test_dict_value_error_and_every_problem_listed() -> None:
    msg = _error(
        """
        camera:
          serial: x
          exposure_us: 1
        thresholds:
          scratch: 0.5
          dent: high
        """
    )
    header = msg.splitlines()[0]
    assert header == f"{SRC}: invalid configuration (2 problems):"
    assert _problem_lines(msg) == [
        f"{SRC}:1: name: Field required",
        f"{SRC}:6: thresholds.dent: Input should be a valid number, "
        "unable to parse string as a number (got 'high')",
    ]


def test_wrong_container_type() -> None:
    msg = _error(
        """
        name: a
        camera: on
        """
    )
    assert _problem_lines(msg) == [
        f"{SRC}:2: camera: Input should be a valid dictionary or instance of Camera (got True)"
    ]


# --- secrets ---------------------------------------------------------------------------------


def test_secret_values_are_never_echoed() -> None:
    msg = _error(
        """
        name: a
        camera: {serial: x, exposure_us: 1}
        outputs:
          - type: mqtt
            host: [not, a, host]
            password: [hunter2, hunter3]
        """
    )
    assert _problem_lines(msg) == [
        f"{SRC}:5: outputs[0].host: Input should be a valid string (got a list)",
        f"{SRC}:6: outputs[0].password: Input should be a valid string (got ***)",
    ]
    assert "hunter" not in msg


def test_secret_from_env_not_echoed_even_by_validator() -> None:
    with pytest.raises(ConfigError) as info:
        load_model_from_text("api_token: ${TOKEN}\n", WithToken, SRC, env={"TOKEN": "abc123"})
    msg = str(info.value)
    assert "abc123" not in msg
    assert _problem_lines(msg) == [
        f"{SRC}:1: api_token: Value error, token *** is too short (got ***)"
    ]


def test_non_secret_values_are_shown() -> None:
    # Guards the redaction tests: the value IS shown when the field is not secret.
    msg = _error("name: a\ncamera: {serial: x, exposure_us: hunter2}\n")
    assert "(got 'hunter2')" in msg


# --- environment substitution ----------------------------------------------------------------


def test_env_substitution_rules() -> None:
    text = _yaml(
        """
        a: ${HOST}
        b: "${HOST}:${PORT:-1883}"
        c: $${HOST} costs $$5
        d: ${EMPTY:-fallback}
        e: ${EMPTY}
        f: ${UNSET:-}
        g: 'x${UNSET:-a b:c}y'
        ${HOST}: keys are not substituted
        """
    )
    doc = parse_yaml(text, SRC, {"HOST": "cam1", "EMPTY": ""})
    assert doc.data == {
        "a": "cam1",
        "b": "cam1:1883",
        "c": "${HOST} costs $$5",
        "d": "fallback",
        "e": "",
        "f": "",
        "g": "xa b:cy",
        "${HOST}": "keys are not substituted",
    }


def test_missing_env_variable_names_variable_path_and_line() -> None:
    msg = _error(
        """
        name: a
        camera: {serial: x, exposure_us: 1}
        outputs:
          - type: mqtt
            host: ${MQTT_HOST}
            password: ${MQTT_PASSWORD}
        """,
        env={"MQTT_PASSWORD": "p"},
    )
    assert _problem_lines(msg) == [
        f"{SRC}:5: outputs[0].host: environment variable 'MQTT_HOST' is not set "
        "(set it, e.g. in the EnvironmentFile, or write ${MQTT_HOST:-default})"
    ]


def test_malformed_env_references() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: ${1X}\nb: ${OPEN\n", SRC, {})
    lines = _problem_lines(str(info.value))
    assert lines[0].startswith(f"{SRC}:1: a: malformed variable reference '${{1X}}'")
    assert lines[1].startswith(f"{SRC}:2: b: unclosed '${{'")


# --- YAML-level errors -----------------------------------------------------------------------


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        load_model_from_text("name: a\ncamera:\n  serial: [1, 2\n  gain: 3\n", Station, SRC)
    msg = str(info.value)
    assert msg.startswith(f"{SRC}:4:7: YAML syntax error: "), msg


def test_yaml_bad_indentation() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("name: a\n  camera: b\n", SRC)
    assert str(info.value).startswith(
        f"{SRC}:2:9: YAML syntax error: mapping values are not allowed"
    )


def test_tab_indentation_and_control_characters() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("name: a\n\tcamera: b\n", SRC)
    assert str(info.value).startswith(f"{SRC}:2:1: YAML syntax error: ")
    assert "indent with spaces" in str(info.value)
    with pytest.raises(ConfigError, match=rf"^{SRC}:2: YAML syntax error: .*U\+0007"):
        parse_yaml("name: a\nb: \x07\n", SRC)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{SRC}:1: file is empty"):
        load_model_from_text(text, Station, SRC)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a single value")]
)
def test_top_level_not_mapping(text: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{SRC}:1: top level must be a mapping .* got {kind}$"):
        load_model_from_text(text, Station, SRC)


def test_duplicate_keys_are_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("name: a\ncamera: {}\nname: b\n", SRC)
    assert _problem_lines(str(info.value)) == [
        f"{SRC}:3: name: duplicate key (first defined on line 1); remove one"
    ]


def test_merge_keys_follow_safe_load() -> None:
    doc = parse_yaml(
        _yaml(
            """
            base: &base {host: h, port: 1}
            out:
              <<: *base
              port: 2
            """
        ),
        SRC,
    )
    assert doc.data["out"] == {"host": "h", "port": 2}


def test_python_tags_are_rejected_not_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match="python/object/apply"):
        parse_yaml(f"a: !!python/object/apply:os.system ['touch {marker}']\n", SRC)
    with pytest.raises(ConfigError, match="python/name"):
        parse_yaml("a: !!python/name:os.system ''\n", SRC)
    assert not marker.exists()


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    with pytest.raises(ConfigError, match="after expanding YAML aliases"):
        parse_yaml("\n".join(lines) + "\n", SRC)


# --- file errors -----------------------------------------------------------------------------


def test_file_not_found(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^{missing}: config file not found"):
        load_model(missing, Station)


def test_directory_and_non_utf8(tmp_path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_model(tmp_path, Station)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_model(bad, Station)


def test_errors_are_linesight_errors_with_file_name(tmp_path) -> None:
    path = tmp_path / "s9.yaml"
    path.write_text("name: a\ncamera: {serial: x, exposure_us: slow}\n", encoding="utf-8")
    with pytest.raises(LinesightError) as info:
        load_model(path, Station)
    assert f"{path}:2: camera.exposure_us:" in str(info.value)


def test_format_path() -> None:
    assert format_path(("outputs", 0, "mqtt", "port")) == "outputs[0].mqtt.port"
    assert format_path(()) == "<top level>"


def test_loader_does_not_import_heavy_modules() -> None:
    code = (
        "import sys, linesight.config.loader; "
        "heavy = [m for m in ('torch', 'cv2', 'onnxruntime', 'faiss') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
