"""Row and channel layout of a Mamba2 mixer, computed once from the config.

``in_proj.weight`` rows: ``z (I) | x (I) | B (G·N, group-major) | C (G·N) | dt (H)``;
``conv1d`` channels: ``x (I) | B (G·N) | C (G·N)``. I = num_heads·head_dim, G = n_groups, N = state_size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Optional

import torch

__all__ = ["InProjLayout", "extra_groups", "tp_shard_problem"]


def extra_groups(n_groups: int, tp: int) -> int:
    """vLLM's ``extra_groups_for_head_shards``: groups added so that every TP rank holds one when tp ∤ n_groups."""
    return 0 if n_groups % tp == 0 else tp - n_groups


def tp_shard_problem(num_heads: int, n_groups: int, tp: int) -> str:
    """Why vLLM cannot shard a Mamba2 mixer over ``tp`` ranks ('' when it can): ``MambaMixer2`` asserts that tp
    divides the heads, and the groups unless n_groups is 1 (then every rank gets a copy)."""
    if num_heads % tp:
        return f"does not divide the model's {num_heads} Mamba heads"
    if n_groups % tp and n_groups != 1:
        return f"neither divides the model's n_groups {n_groups} nor can replicate it (vLLM replicates only n_groups 1)"
    return ""


@dataclass(frozen=True)
class InProjLayout:
    hidden_size: int
    num_heads: int
    head_dim: int
    n_groups: int
    state_size: int  # N: the B/C width of in_proj and conv1d
    conv_kernel: int
    state_rank: Optional[int] = None  # the SSM state's width when projected (ghost_vllm.mamba.projection); None = N

    @property
    def ssm_width(self) -> int:
        """The width of the SSM state: ``state_rank`` of a projected mixer, else ``state_size``."""
        return self.state_size if self.state_rank is None else self.state_rank

    @classmethod
    def from_config(cls, cfg) -> "InProjLayout":
        """From a pure-Mamba2 transformers config object or ``config.json`` dict (HF names)."""
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
        return cls(
            hidden_size=int(get("hidden_size")),
            num_heads=int(get("num_heads")),
            head_dim=int(get("head_dim")),
            n_groups=int(get("n_groups")),
            state_size=int(get("state_size")),
            conv_kernel=int(get("conv_kernel", 4) or 4),
        )

    # sizes -------------------------------------------------------------------------------------------------------
    @property
    def intermediate_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.n_groups

    @property
    def conv_dim(self) -> int:
        return self.intermediate_size + 2 * self.n_groups * self.state_size

    @property
    def in_proj_rows(self) -> int:
        return 2 * self.intermediate_size + 2 * self.n_groups * self.state_size + self.num_heads

    # offsets -----------------------------------------------------------------------------------------------------
    @property
    def b_row0(self) -> int:
        """First B row in ``in_proj`` (B and C rows of the conv channels sit ``intermediate_size`` lower)."""
        return 2 * self.intermediate_size

    @property
    def c_row0(self) -> int:
        return self.b_row0 + self.n_groups * self.state_size

    def split_sizes(self) -> list[int]:
        """Sizes for ``in_proj`` output split into z, x, B, C, dt."""
        gn = self.n_groups * self.state_size
        return [self.intermediate_size, self.intermediate_size, gn, gn, self.num_heads]

    # index sets for pruning -------------------------------------------------------------------------------------
    def bc_offsets(self, keep: torch.Tensor) -> torch.Tensor:
        """Kept channel indices ``keep [G, N']`` → flat offsets ``g·N + keep[g, j]`` of the kept entries within one
        group-major block of ``G·N`` B (or C) rows."""
        g = torch.arange(self.n_groups, device=keep.device)[:, None]
        return (g * self.state_size + keep).reshape(-1)

    def in_proj_keep_rows(self, keep: torch.Tensor) -> torch.Tensor:
        """Rows of ``in_proj.weight`` that survive when each group keeps ``keep [G, N']``."""
        flat = self.bc_offsets(keep).cpu()
        z_x = torch.arange(2 * self.intermediate_size)
        dt = torch.arange(self.c_row0 + self.n_groups * self.state_size, self.in_proj_rows)
        return torch.cat([z_x, self.b_row0 + flat, self.c_row0 + flat, dt])

    def conv_keep_channels(self, keep: torch.Tensor) -> torch.Tensor:
        """Channels of ``conv1d`` that survive."""
        flat = self.bc_offsets(keep).cpu()
        i, gn = self.intermediate_size, self.n_groups * self.state_size
        return torch.cat([torch.arange(i), i + flat, i + gn + flat])

    def with_state_size(self, n: int) -> "InProjLayout":
        """The layout with B/C width ``n`` (and no projection)."""
        return InProjLayout(self.hidden_size, self.num_heads, self.head_dim, self.n_groups, n, self.conv_kernel)

    def with_rank(self, r: Optional[int]) -> "InProjLayout":
        """The same B/C width with the SSM state projected to ``r`` (None: not projected)."""
        return replace(self, state_rank=r)

    def state_elements(self, tp: int = 1) -> tuple[int, int]:
        """Per sequence and layer on one of ``tp`` tensor-parallel ranks: (conv state elements, SSM state elements);
        the conv state is N wide, the SSM state :attr:`ssm_width` wide.
        vLLM shards heads and conv channels by ``tp`` and first adds :func:`extra_groups` groups when tp ∤ n_groups
        (``MambaStateShapeCalculator.mamba2_state_shape``)."""
        if tp < 1 or self.num_heads % tp:
            raise ValueError(f"tensor parallel size {tp} does not divide num_heads {self.num_heads}")
        groups = self.n_groups + extra_groups(self.n_groups, tp)
        conv_dim = self.intermediate_size + 2 * groups * self.state_size
        return (self.conv_kernel - 1) * (conv_dim // tp), (self.num_heads // tp) * self.head_dim * self.ssm_width
