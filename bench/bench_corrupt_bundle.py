"""Issue-11 corrupt-bundle matrix: random single-byte flips of a bundle .zip, each loaded the way the daemon
loads a bundle (ModelHolder: verification, golden images). Every flip must end as one of
  refused      a BundleError with a message (alarm model_refused, the old model keeps running)
  harmless     loads and is the same model (the flip hit zip metadata no hash covers: timestamps, comments)
and never as
  unexpected   refused only by the catch-all (an exception type that is not a BundleError: a bug to fix)
  silent       loads as a DIFFERENT model without a word.
Prints the counts and the distinct messages; asserts nothing.
    .venv/bin/python bench/bench_corrupt_bundle.py BUNDLE.zip [--flips 300] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
from collections import Counter
from pathlib import Path


def main() -> None:
    from linesight.daemon.model import ModelHolder, ModelRefused
    from linesight.errors import LinesightError
    from linesight.export.bundle import load_bundle

    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", help="a bundle .zip (fit -o model.zip)")
    ap.add_argument("--flips", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    logging.disable(logging.CRITICAL)  # the catch-all logs a traceback; it is counted below instead
    original = Path(a.bundle).read_bytes()
    digest = load_bundle(Path(a.bundle)).digest
    rng = random.Random(a.seed)
    outcome: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flipped.zip"
        for _ in range(a.flips):
            data = bytearray(original)
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            holder = ModelHolder(path)
            try:
                engine = holder.load()
            except ModelRefused as exc:
                cause = exc.__cause__
                kind = "refused" if cause is None or isinstance(cause, LinesightError) else "unexpected"
                outcome[kind] += 1
                messages[f"{kind}: {str(exc).split(': ', 1)[-1][:90]}"] += 1
                continue
            outcome["harmless" if engine.bundle.digest == digest else "silent"] += 1
    print(json.dumps({"bundle": a.bundle, "bytes": len(original), "flips": a.flips, "outcome": dict(outcome)},
                     indent=2))
    for msg, n in messages.most_common(12):
        print(f"{n:4d}  {msg}")


if __name__ == "__main__":
    main()
