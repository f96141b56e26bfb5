"""Fit + evaluate one recipe on an MVTec-layout set and print one JSON line of figures (the preset tuning).

Usage:
    .venv/bin/python bench/bench_recipe.py [--data PATH] [--preset fast] KEY=VALUE ...
KEY is any FitConfig field, SECTION.FIELD inside a section (input_size=160 coreset.ratio=0.25
backbone=efficientnet_lite2 index.kind=ivf 'views.scales=[0,1]' ...; values are JSON, bare words are strings).
Equivalent CLI: `linesight fit DATA -o m.zip --preset P --input-size ...` then `linesight evaluate m.zip DATA -o e`.
Asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"


def value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--preset", default="fast")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from linesight.config.fit import preset
    from linesight.trainer.evaluate import evaluate
    from linesight.trainer.fit import fit

    kw: dict = {}
    for key, text in (o.split("=", 1) for o in a.overrides):
        *sections, name = key.split(".")
        at = kw
        for section in sections:
            at = at.setdefault(section, {})
        at[name] = value(text)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            bundle = fit(a.data, Path(tmp) / "m.zip", preset(a.preset, **kw))
        fit_s = time.perf_counter() - t0
        m = evaluate(Path(tmp) / "m.zip", a.data, Path(tmp) / "e")
        eval_s = time.perf_counter() - t0 - fit_s
    per_type = {t: [round(d.get(k) or 0, 3) for k in ("image_auroc", "pixel_auroc", "aupro")]
                for t, d in m.get("per_type", {}).items()}
    print(json.dumps({"preset": a.preset, "overrides": kw, "bank": list(bundle.bank.shape), "fit_s": round(fit_s),
                      "eval_s": round(eval_s), "image_auroc": round(m["image_auroc"], 4),
                      "pixel_auroc": round(m["pixel_auroc"], 4), "aupro": round(m["aupro"], 4),
                      "per_type_image_pixel_aupro": per_type}), flush=True)


if __name__ == "__main__":
    main()
