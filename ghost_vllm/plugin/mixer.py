"""``GhostMambaMixer2``: vLLM's stock Mamba2 mixer reporting a per-layer cache spec; the base of the plugin's other
mixers (``int8_mixer``), in its own module so that the model and the mixers import it without a cycle."""

from __future__ import annotations

from vllm.model_executor.layers.mamba.mamba_mixer2 import MambaMixer2

from ghost_vllm.plugin.spec import ghost_spec

__all__ = ["GhostMambaMixer2"]


class GhostMambaMixer2(MambaMixer2):
    """The stock mixer reporting a :class:`GhostMambaSpec` (per-layer page size; see ``ghost_vllm.plugin.spec``)."""

    def get_kv_cache_spec(self, vllm_config):
        spec = super().get_kv_cache_spec(vllm_config)
        return ghost_spec(spec) if spec is not None else None
