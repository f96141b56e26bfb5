"""Daemon verbs (run, check-config, demo); kept apart so the training CLI never imports daemon code."""
from __future__ import annotations

import argparse


def add_verbs(sub: argparse._SubParsersAction) -> None:
    pass
