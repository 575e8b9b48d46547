"""Per-layer state budgets: a checkpoint's ``config.json`` records ``layer_state_sizes`` (one N'_l per layer) when
its layers keep different numbers of state channels, with ``state_size`` = the largest. A uniform checkpoint has no
such key (every layer has ``state_size``). Helpers here read that key and give a built model its per-layer shapes."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ghost_vllm.errors import ModelError

__all__ = ["LAYER_STATE_SIZES_KEY", "config_state_sizes", "is_uniform", "shrink_mixers"]

LAYER_STATE_SIZES_KEY = "layer_state_sizes"


def config_state_sizes(cfg: Mapping[str, Any] | Any, where: str = "config.json") -> list[int]:
    """N'_l of every layer from a ``config.json`` dict (or a config object): ``layer_state_sizes`` when present, else
    ``state_size`` repeated. Raises :class:`ModelError` when the key disagrees with the config."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    L, N = int(get("num_hidden_layers")), int(get("state_size"))
    sizes: Optional[Sequence[Any]] = get(LAYER_STATE_SIZES_KEY)
    if sizes is None:
        return [N] * L
    if not isinstance(sizes, (list, tuple)) or len(sizes) != L or not all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= N for n in sizes
    ):
        raise ModelError(f"{where}: {LAYER_STATE_SIZES_KEY} must list {L} integers in [1, state_size={N}], got "
                         f"{sizes!r}; re-run 'ghost-vllm prune'")
    if max(sizes) != N:
        raise ModelError(f"{where}: state_size {N} is not the largest of {LAYER_STATE_SIZES_KEY} {list(sizes)}; "
                         f"re-run 'ghost-vllm prune'")
    return [int(n) for n in sizes]


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
