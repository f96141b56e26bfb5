"""Inspection projects: a folder holding images, train config, versioned models and history (docs/project.md)."""
