"""Old vs new evaluation side by side (`evaluate --compare OLD`): did the line get better or worse, and where?

OLD is what an engineer has at hand: a previous evaluation (its metrics.json, its folder or its report.html)
or a bundle, which `evaluate` then scores on the same images in the same run. Production figures lead, as
in the report; every figure says which direction is an improvement so the report can colour the change.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from linesight.errors import DataError

METRICS_FILE = "metrics.json"
_NEEDED = ("n_good", "n_defect", "confusion_matrix", "chosen_threshold")


@dataclass(frozen=True)
class Row:
    """One figure of both evaluations; `better` is the direction that is an improvement (None: neither)."""
    name: str
    old: float | None
    new: float | None
    kind: Literal["rate", "score", "threshold"]
    better: Literal["higher", "lower"] | None

    @property
    def delta(self) -> float | None:
        return None if self.old is None or self.new is None else self.new - self.old

    @property
    def change(self) -> Literal["better", "worse", "same"] | None:
        d = self.delta
        if d is None or self.better is None:
            return None
        if abs(d) < 1e-9:
            return "same"
        return "better" if (d > 0) == (self.better == "higher") else "worse"


@dataclass(frozen=True)
class Comparison:
    """What was compared with what, the figures, and why a difference may not be the model's doing."""
    source: str
    rows: list[Row]
    notes: list[str]

    def to_dict(self) -> dict:
        return {"source": self.source, "notes": self.notes,
                "rows": [{**asdict(r), "delta": r.delta, "change": r.change} for r in self.rows]}


def metrics_file(old: str | Path) -> Path | None:
    """The metrics.json OLD names (the file, the evaluation folder, or the report.html beside it); None when
    OLD is something else, which the caller then opens as a bundle."""
    p = Path(old)
    if not p.exists():
        raise DataError(f"--compare {old}: no such file or folder; give a previous metrics.json, its evaluation "
                        "folder, or a bundle")
    if p.is_file() and p.suffix.lower() == ".json":
        return p
    if p.is_file() and p.suffix.lower() in (".html", ".htm"):
        p = p.parent
    if p.is_dir() and (p / METRICS_FILE).is_file():
        return p / METRICS_FILE
    if p.is_dir() and not (p / "manifest.json").is_file():
        raise DataError(f"--compare {old}: the folder holds neither {METRICS_FILE} (an evaluation) nor "
                        "manifest.json (a bundle)")
    return None


def read_metrics(path: Path) -> dict:
    """A previous evaluation's metrics; DataError when the file is not one (e.g. another tool's JSON)."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"--compare {path}: cannot read it as JSON ({exc})") from None
    missing = [k for k in _NEEDED if not isinstance(m, dict) or k not in m]
    if missing:
        raise DataError(f"--compare {path}: not a linesight evaluation metrics.json (no {', '.join(missing)})")
    return m


def _rates(m: dict) -> tuple[float | None, float | None]:
    cm = m["confusion_matrix"]
    good, bad = cm["fp"] + cm["tn"], cm["fn"] + cm["tp"]
    return (cm["fp"] / good if good else None), (cm["fn"] / bad if bad else None)


def compare(old: dict, new: dict, source: str) -> Comparison:
    """Production figures at each side's own threshold, then the threshold-free ML figures, overall and per type."""
    (ofr, oesc), (nfr, nesc) = _rates(old), _rates(new)
    rows = [Row("false-reject rate (good parts rejected)", ofr, nfr, "rate", "lower"),
            Row("escape rate (defective parts passed)", oesc, nesc, "rate", "lower"),
            Row("threshold", old["chosen_threshold"], new["chosen_threshold"], "threshold", None)]
    for key, name in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
                      ("f1_max", "F1 max")):
        rows.append(Row(name, old.get(key), new.get(key), "score", "higher"))
    op, np_ = old.get("per_type", {}), new.get("per_type", {})
    for t in sorted(set(op) | set(np_)):
        o, n = op.get(t, {}), np_.get(t, {})
        rows.append(Row(f"{t}: caught at the threshold", o.get("recall_at_threshold"), n.get("recall_at_threshold"),
                        "rate", "higher"))
        rows.append(Row(f"{t}: image AUROC", o.get("image_auroc"), n.get("image_auroc"), "score", "higher"))
    notes = []
    od, nd = old.get("dataset") or {}, new.get("dataset") or {}
    if od.get("fingerprint") and nd.get("fingerprint"):
        if od["fingerprint"] != nd["fingerprint"]:
            notes.append(f"the old figures were measured on other images ({od.get('path')}, {old['n_good']} good / "
                         f"{old['n_defect']} defective) than the new ones ({new['n_good']} / {new['n_defect']}): "
                         "differences mix the model and the data")
    elif (old["n_good"], old["n_defect"]) != (new["n_good"], new["n_defect"]):
        notes.append(f"the old figures were measured on {old['n_good']} good / {old['n_defect']} defective images, "
                     f"the new on {new['n_good']} / {new['n_defect']}: differences mix the model and the data")
    elif not od:
        notes.append("the old metrics do not record which images they were measured on (written by an older "
                     "linesight); the counts match, so it is probably the same set")
    return Comparison(source, rows, notes)
