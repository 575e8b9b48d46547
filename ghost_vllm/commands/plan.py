"""``ghost-vllm plan MODEL [MODEL…]``: concurrency and vLLM block arithmetic per model and variant (see
:mod:`ghost_vllm.planner.plan`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ghost_vllm.errors import RecipeError
from ghost_vllm.planner.models import resolve_plan_model
from ghost_vllm.planner.plan import (
    PlanSettings,
    check_holds_a_sequence,
    format_plan,
    plan_target,
    plan_variants,
)

__all__ = ["parse_sparsities", "run_plan", "DEFAULT_WHAT_IFS"]

DEFAULT_WHAT_IFS = (0, 0.25, 0.5, 0.75)  # κ what-ifs planned for a dense model when --sparsity is not given


def parse_sparsities(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"--sparsity {text!r}: not a comma-separated list of numbers; write e.g. 0,0.25,0.5,0.75") from None
    if not values:
        raise RecipeError("--sparsity: empty list; write e.g. 0,0.25,0.5,0.75")
    for k in values:
        if not 0 <= k < 1:
            raise RecipeError(f"--sparsity {k:g}: must be in [0, 1) (the fraction of state channels removed)")
    return values


def run_plan(models: Sequence[str], settings: PlanSettings, sparsities: Optional[list[float]] = None,
             target_seqs: Optional[int] = None) -> tuple[list[dict], str]:
    """Rows (one dict per model and variant) and the text report."""
    if target_seqs is not None and target_seqs < 1:
        raise RecipeError(f"--target-seqs {target_seqs}: must be >= 1")
    resolved = [resolve_plan_model(m) for m in models]  # every name checked before any output
    out, texts = [], []
    for model in resolved:
        if sparsities is None and target_seqs is None:
            what_if = list(DEFAULT_WHAT_IFS) if not model.pruned else None
        else:
            what_if = sparsities
        rows = plan_variants(model, settings, what_if)
        unreachable = None
        if target_seqs is not None:
            hit = plan_target(model, settings, target_seqs)
            if hit is None:
                unreachable = target_seqs
            else:
                rows.append(hit)
        check_holds_a_sequence(model, rows, settings)
        out.extend(r.to_dict() | ({"target_seqs": target_seqs, "reachable": True} if r.variant.startswith("target")
                                  else {}) for r in rows)
        if unreachable is not None:
            out.append({"model": model.name, "variant": f"target {target_seqs:,} seqs", "target_seqs": target_seqs,
                        "reachable": False})
        texts.append(format_plan(model, rows, settings, unreachable))
    return out, "\n\n".join(texts)


def dump_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1)


def results_dir(arg: Optional[Path]) -> Optional[Path]:
    from ghost_vllm.planner.quality import default_results_dir

    return arg if arg is not None else default_results_dir()
