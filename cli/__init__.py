"""linesight: edge visual inspection — PatchCore trainer, deployable bundle, 24/7 daemon.

This folder, `cli/`, is the `linesight` package root (pyproject maps it); `daemon/`, `trainer/`, `export/` and
`config/` beside it install as `linesight.daemon`, `linesight.trainer`, `linesight.export`, `linesight.config`.
The README's module map says which module does what.
"""

__version__ = "0.1.0"
