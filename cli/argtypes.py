"""argparse value types shared by several verbs: one rule for what a rate on the command line may be."""
from __future__ import annotations

import argparse


def fraction(text: str) -> float:
    """A rate flag: a fraction in [0, 1), so 0.01 means 1 % (a bare 1 is refused, not read as 1 %)."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1): write 0.01 for 1 %")
    return v
