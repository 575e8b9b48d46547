"""Make transformers' Mamba2 gated RMSNorm normalise per group, as mamba_ssm and vLLM do.

With ``n_groups == 1`` the two agree and nothing is changed; with more groups transformers normalises over the whole
intermediate dimension, which is not what the checkpoints were trained with.
"""

from __future__ import annotations

import torch

from ghost_vllm.mamba.reference import gated_group_rmsnorm

__all__ = ["GroupedGatedRMSNorm", "patch_group_norm"]


class GroupedGatedRMSNorm(torch.nn.Module):
    """Drop-in for ``MambaRMSNormGated`` (same ``weight`` and ``variance_epsilon``) that normalises per group."""

    def __init__(self, weight: torch.nn.Parameter, eps: float, n_groups: int):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps
        self.n_groups = n_groups

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        dtype = hidden_states.dtype
        z = None if gate is None else gate.float()
        out = gated_group_rmsnorm(hidden_states.float(), z, self.weight, self.variance_epsilon, self.n_groups)
        return out.to(dtype)


def patch_group_norm(model) -> int:
    """Replace every mixer's gated norm by the group-wise one when ``n_groups > 1``. Returns how many were patched."""
    n_groups = int(model.config.n_groups)
    if n_groups == 1:
        return 0
    count = 0
    for layer in model.backbone.layers:
        norm = layer.mixer.norm
        if not isinstance(norm, GroupedGatedRMSNorm):
            layer.mixer.norm = GroupedGatedRMSNorm(norm.weight, norm.variance_epsilon, n_groups)
            count += 1
    return count
