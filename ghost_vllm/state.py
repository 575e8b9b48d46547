"""Exact arithmetic of the Mamba2 recurrent state per sequence (what vLLM's MambaStateShapeCalculator allocates):
per Mamba layer (every layer of a pure Mamba2, the family's Mamba layers of a hybrid) a conv state of
``(K-1)·(I + 2·G·N_l)`` and an SSM state of ``H·head_dim·N_l`` elements, summed over the layers (N_l = the d_state in
every layer, or a Mamba2 checkpoint's per-layer ``layer_state_sizes``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.units import DTYPE_BYTES, ssm_state_bytes


__all__ = ["StateSize", "state_size_of", "layer_state_bytes"]


def layer_state_bytes(layout: InProjLayout, conv_dtype: str, ssm_dtype: str, tensor_parallel_size: int = 1,
                      rank: Optional[int] = None) -> tuple[int, int]:
    """(conv bytes, SSM bytes) one sequence holds in ONE Mamba layer of ``layout`` (its d_state = the layer's N_l) on
    one of ``tensor_parallel_size`` ranks: the elements of :meth:`InProjLayout.state_elements` (a projected state:
    SSM at ``rank``, conv at N_l) priced by the state-dtype table (:data:`ghost_vllm.units.STATE_DTYPE_TABLE`, scales
    included). The one definition every bytes-per-sequence figure is a sum of: :func:`state_size_of` (inspect,
    compare, slots, ghost.json, /metrics), the planner's :func:`ghost_vllm.planner.arith.block_math` and its hybrid
    pages (:func:`ghost_vllm.planner.hybrid.hybrid_layout`)."""
    conv, ssm = layout.with_rank(rank).state_elements(tensor_parallel_size)
    return conv * DTYPE_BYTES[conv_dtype], ssm_state_bytes(ssm, layout.num_heads // tensor_parallel_size, ssm_dtype)


@dataclass(frozen=True)
class StateSize:
    layers: int
    state_size: int  # the largest N_l
    conv_elements: int  # per sequence, all layers
    ssm_elements: int  # per sequence, all layers
    conv_bytes: int
    ssm_bytes: int

    layer_bytes: tuple[int, ...] = ()  # conv + SSM bytes of each layer
    state_ranks: Optional[tuple[int, ...]] = None  # a projected state's width per layer (conv stays N_l wide)

    @property
    def bytes_per_sequence(self) -> int:
        return self.conv_bytes + self.ssm_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bytes_per_sequence": self.bytes_per_sequence}


def state_size_of(config: dict[str, Any], state_size: Optional[int] = None, dtype: Optional[str] = None,
                  ssm_dtype: Optional[str] = None, state_sizes: Optional[Sequence[int]] = None,
                  tensor_parallel_size: int = 1, state_ranks: Optional[Sequence[int]] = None) -> StateSize:
    """Mamba state per sequence for a ``config.json`` dict of any supported family (a dict without ``model_type`` is
    read as Mamba2): every Mamba layer at ``state_size``, or per Mamba layer at ``state_sizes``, or (neither given) as
    the config says (``layer_state_sizes`` when present). ``dtype`` is the conv-state dtype (default: the config's
    ``torch_dtype``/``dtype``), ``ssm_dtype`` the SSM state's (default: same; ``int8`` adds a float32 scale per
    head, :func:`ghost_vllm.units.ssm_state_bytes`). Attention KV is not included
    (:mod:`ghost_vllm.planner.hybrid`). ``tensor_parallel_size`` > 1 gives what ONE rank holds per sequence (vLLM
    shards heads and conv channels; see :meth:`InProjLayout.state_elements`). ``state_ranks``: a projected
    state's width per layer (default: the config's ``ghost_state_ranks`` when the sizes come from the config too);
    its conv state stays N_l wide."""
    from ghost_vllm.families import family_for_config

    # hand-built Mamba2 dicts (the planner's converted mamba_ssm configs, tests) carry no model_type
    family = family_for_config(config if config.get("model_type") else {**config, "model_type": "mamba2"})
    L = len(family.mamba_layers(config))
    if state_sizes is None:
        if state_size is None and state_ranks is None:
            state_ranks = family.state_ranks(config)
        state_sizes = [state_size] * L if state_size is not None else family.state_sizes(config)
    if len(state_sizes) != L:
        raise AssertionError(f"{len(state_sizes)} state sizes for {L} Mamba layers")
    layout = family.layout(config).with_state_size(max(state_sizes))
    dtype = dtype or str(config.get("torch_dtype") or config.get("dtype") or "float32")
    ssm_dtype = ssm_dtype or dtype
    heads = layout.num_heads // tensor_parallel_size
    conv = ssm = 0
    per_layer = []
    ranks = list(state_ranks) if state_ranks is not None else [None] * L
    if len(ranks) != L:
        raise AssertionError(f"{len(ranks)} state ranks for {L} Mamba layers")
    conv_b = ssm_b = 0
    for n, r in zip(state_sizes, ranks):
        lay = layout.with_state_size(int(n))
        cl, sl = lay.with_rank(r).state_elements(tensor_parallel_size)
        cb, sb = layer_state_bytes(lay, dtype, ssm_dtype, tensor_parallel_size, r)
        conv, ssm, conv_b, ssm_b = conv + cl, ssm + sl, conv_b + cb, ssm_b + sb
        per_layer.append(cb + sb)
    return StateSize(L, layout.state_size, conv, ssm, conv_b, ssm_b, tuple(per_layer),
                     None if state_ranks is None else tuple(int(r) for r in state_ranks))
