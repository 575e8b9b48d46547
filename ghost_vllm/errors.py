"""User-facing errors: each says what failed, where, and how to fix it, in one line."""

from __future__ import annotations

__all__ = [
    "GhostError",
    "RecipeError",
    "CalibrationError",
    "ModelError",
    "CheckpointError",
    "OutputError",
]


class GhostError(Exception):
    """Base class for errors meant for the user (the CLI prints them as one line, exit code 2)."""


class RecipeError(GhostError):
    """A recipe or flag has an unknown key, a wrong type or a value out of range."""


class CalibrationError(GhostError):
    """Calibration text is missing, unreadable or too short for the request."""


class ModelError(GhostError):
    """The input model is not a usable Mamba2 checkpoint."""


class CheckpointError(GhostError):
    """A ghost checkpoint is inconsistent (ghost.json vs config.json vs weight shapes)."""


class OutputError(GhostError):
    """The output location exists, is not writable, or ran out of space."""
