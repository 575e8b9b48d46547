"""What ``--help`` shows: every option's default, and for ``prune`` the recipe field each flag overrides."""

from __future__ import annotations

import argparse

__all__ = ["PRUNE_FLAGS", "recipe_default", "show_defaults"]

# prune flag (argparse dest) → the recipe field it overrides; the field's default is shown in --help
PRUNE_FLAGS = {
    "model": "model.path", "tokenizer": "model.tokenizer", "dtype": "model.dtype", "device": "model.device",
    "method": "selection.method", "sparsity": "selection.sparsity", "multiple_of": "selection.multiple_of",
    "seed": "selection.seed", "allocation": "selection.allocation", "state_sizes": "selection.state_sizes",
    "min_state_size": "selection.min_state_size", "refit": "selection.refit", "calibration": "calibration.source",
    "nsamples": "calibration.nsamples", "seq_len": "calibration.seq_len", "batch_size": "calibration.batch_size",
    "out": "output.dir", "overwrite": "output.overwrite", "state_dtype": "output.state_dtype",
}


def recipe_default(field: str):
    import dataclasses

    from ghost_vllm.recipe import Recipe

    section, key = field.split(".")
    return next(f for f in dataclasses.fields(getattr(Recipe(), section)) if f.name == key).default


def show_defaults(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Append ``(default: X)`` to every option's help whose default means something and is not already stated;
    ``defaults`` (dest → value) gives the default where argparse's is None because a recipe supplies it."""
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        value = (defaults or {}).get(action.dest, action.default)
        if value is None or value is False or value == [] or value == argparse.SUPPRESS:
            continue
        text = action.help or ""
        if "default" in text.lower():
            continue
        shown = str(value).replace("%", "%%")
        action.help = f"{text} (default: {shown})".strip()
