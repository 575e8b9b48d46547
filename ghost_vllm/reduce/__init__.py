"""Reductions of the SSM state that are not a choice of channels: :mod:`ghost_vllm.reduce.balanced` (balanced
truncation: a projection of B and C after the conv)."""
