"""docs/reference-config.yaml: generated from the config models, checked in, and every default in it is the models'."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter

from linesight.cli import main
from linesight.config.daemon import DaemonConfig
from linesight.config.outputs import MqttTlsConfig
from linesight.config.reference import reference_yaml
from linesight.config.sources import SourceConfig

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference-config.yaml"
REQUIRED = {"bundle": "/srv/model.zip", "path": "/srv/images", "uri": "line.mp4"}  # keys without a default


def test_checked_in_reference_is_what_the_models_generate(capsys) -> None:
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == reference_yaml()
    assert REFERENCE.read_text() == reference_yaml(), \
        "docs/reference-config.yaml is stale: run `linesight config reference > docs/reference-config.yaml`"


def fill(doc: Any) -> Any:
    """The document with the required keys given a value."""
    if not isinstance(doc, dict):
        return doc
    return {k: REQUIRED[k] if v is None and k in REQUIRED else fill(v) for k, v in doc.items()}


def skeleton(doc: dict) -> dict:
    """Only the sections, required keys and source type of `doc`: the models default everything else."""
    return {k: skeleton(v) if isinstance(v, dict) else v for k, v in doc.items()
            if isinstance(v, dict) or k in REQUIRED or k == "type"}


def keys(d: Any, prefix: str = "") -> set[str]:
    return {k for name, v in d.items() for k in {prefix + name} | keys(v, f"{prefix}{name}.")} \
        if isinstance(d, dict) else set()


def check(adapter: TypeAdapter, doc: dict) -> None:
    """Every value written is the default, and every key the model has is written."""
    written = adapter.validate_python(fill(doc))
    assert adapter.dump_python(written, mode="json") == adapter.dump_python(
        adapter.validate_python(fill(skeleton(doc))), mode="json")
    assert keys(adapter.dump_python(written, mode="json")) == keys(fill(doc))


def commented_blocks(text: str, name: str) -> list[dict]:
    """The alternatives shown commented out (`<pad># name:` and the `<pad>#   ...` lines under it), uncommented."""
    blocks = re.findall(rf"^( *)# {name}:\n((?:\1#   .*\n)+)", text, re.MULTILINE)
    return [yaml.safe_load(f"{name}:\n" + "".join(line[len(pad) + 2:] + "\n" for line in body.splitlines()))[name]
            for pad, body in blocks]


def test_active_document_holds_every_key_at_its_default() -> None:
    doc = yaml.safe_load(reference_yaml())
    assert doc["source"]["type"] == "genicam" and doc["model"]["bundle"] is None
    check(TypeAdapter(DaemonConfig), doc)


def test_every_commented_alternative_holds_every_key_at_its_default() -> None:
    sources = commented_blocks(reference_yaml(), "source")
    assert [s["type"] for s in sources] == ["folder", "video", "synthetic"]
    for block in sources:
        check(TypeAdapter(SourceConfig), block)
    (tls,) = commented_blocks(reference_yaml(), "tls")
    check(TypeAdapter(MqttTlsConfig), tls)


def test_a_section_left_out_says_where_it_differs_from_an_empty_one() -> None:
    outputs = DaemonConfig(model={"bundle": "m.zip"}, source={"type": "genicam"}).outputs
    text = reference_yaml()
    for name in type(outputs).model_fields:
        left_out = getattr(outputs, name).model_dump(mode="json")
        empty = type(getattr(outputs, name))().model_dump(mode="json")
        comment = re.search(rf"((?:^  #.*\n)+)^  {name}:$", text, re.MULTILINE)[1]
        for key in (k for k in left_out if left_out[k] != empty[k]):
            assert f"Without this section: {key}: {yaml.safe_dump(left_out[key]).splitlines()[0]}" in \
                comment.replace("\n  # ", " "), name
