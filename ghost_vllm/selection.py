"""Scores [G, N] → kept channel indices [G, N'] (sorted ascending), the same count in every group."""

from __future__ import annotations

import torch

from ghost_vllm.errors import RecipeError

__all__ = ["kept_count", "check_state_sizes", "select_channels"]


def kept_count(state_size: int, sparsity: float, multiple_of: int = 1) -> int:
    """N' = round((1 - κ)·N), rounded to the nearest multiple of ``multiple_of`` (at least one multiple)."""
    if not 0.0 <= sparsity < 1.0:
        raise RecipeError(f"selection.sparsity: {sparsity} is outside [0, 1); use e.g. 0.5 to remove half the channels")
    if multiple_of < 1 or multiple_of > state_size:
        raise RecipeError(
            f"selection.multiple_of: {multiple_of} must be between 1 and the model's state_size {state_size}"
        )
    n = round((1.0 - sparsity) * state_size)
    if multiple_of > 1:
        n = max(multiple_of, int(round(n / multiple_of)) * multiple_of)
    if n < 1:
        raise RecipeError(
            f"selection.sparsity: {sparsity} leaves N' = 0 of {state_size} state channels; use a smaller sparsity"
        )
    return min(n, state_size)


def check_state_sizes(sizes: list[int], state_size: int, num_layers: int) -> None:
    """Explicit per-layer budgets against the model (the model-free checks are in the recipe)."""
    if len(sizes) != num_layers:
        raise RecipeError(f"selection.state_sizes: {len(sizes)} sizes given, the model has {num_layers} layers; give "
                          f"one size per layer (e.g. --state-sizes {','.join([str(state_size // 2)] * num_layers)})")
    for i, n in enumerate(sizes):
        if n > state_size:
            raise RecipeError(f"selection.state_sizes[{i}]: {n} is above the model's state_size {state_size}; a layer "
                              f"can keep at most {state_size} channels")


def select_channels(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Top ``n_keep`` channels of each group by score, ties broken by lower index; returns sorted ``[G, n_keep]``."""
    G, N = scores.shape
    if not 1 <= n_keep <= N:
        raise AssertionError(f"n_keep {n_keep} outside [1, {N}]")
    if not torch.isfinite(scores).all():
        raise AssertionError("non-finite channel scores")
    # stable descending sort: equal scores keep index order
    order = torch.sort(scores.double(), dim=1, descending=True, stable=True).indices
    return torch.sort(order[:, :n_keep], dim=1).values
