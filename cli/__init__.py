"""linesight: edge visual inspection — PatchCore trainer, deployable bundle, 24/7 daemon."""

__version__ = "0.1.0"
