"""Channel scoring methods. Each module exposes ``score(stats: LayerStats) -> Tensor[n_groups, state_size]``
(higher = more important); :data:`SCORERS` maps the recipe's method name to it."""

from __future__ import annotations

from typing import Callable

import torch

from ghost_vllm.scoring import ghost, ghost_unpaired, magnitude, random, taylor
from ghost_vllm.scoring.base import LayerStats

__all__ = ["LayerStats", "SCORERS", "NEEDS_STATE_STATS", "NEEDS_BACKWARD", "PROJECTIONS"]

SCORERS: dict[str, Callable[[LayerStats], torch.Tensor]] = {
    "ghost": ghost.score,
    "ghost_unpaired": ghost_unpaired.score,
    "magnitude": magnitude.score,
    "random": random.score,
    "taylor": taylor.score,
}

# methods that read the scan's statistics (the others skip the scan and only propagate activations)
NEEDS_STATE_STATS = frozenset({"ghost", "ghost_unpaired"})
# methods that need a backward pass (mask gradients) before the layer loop
NEEDS_BACKWARD = frozenset({"taylor"})
# methods that keep every channel and project the state instead (ghost_vllm.reduce; no scorer)
PROJECTIONS = frozenset({"balanced"})
