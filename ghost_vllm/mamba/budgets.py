"""Per-layer state budgets on a built model: a checkpoint's ``config.json`` records ``layer_state_sizes`` (one N'_l
per layer; read and written by :mod:`ghost_vllm.ghost_format`) when its layers keep different numbers of state
channels, with ``state_size`` = the largest. Helpers here give a built model those per-layer shapes."""

from __future__ import annotations

from typing import Sequence

__all__ = ["is_uniform", "shrink_mixers"]


def is_uniform(sizes: Sequence[int]) -> bool:
    return len(set(sizes)) <= 1


def shrink_mixers(model, sizes: Sequence[int]) -> None:
    """Give the mixers of a (meta-device or freshly built) transformers ``Mamba2ForCausalLM`` their per-layer
    state sizes, so that a per-layer checkpoint's tensors fit it. Layers at ``config.state_size`` are untouched."""
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.surgery import resize_mixer

    layout = InProjLayout.from_config(model.config)
    for block, n in zip(model.backbone.layers, sizes):
        if n != layout.state_size:
            resize_mixer(block.mixer, layout, n)
