"""Zyphra Zamba2 (``Zamba2ForCausalLM``, model_type ``zamba2``): every layer has a Mamba2 mixer; ``hybrid`` layers
(``layers_block_type`` / ``hybrid_layer_ids``) first run a *shared* attention block (weights shared across layers, fed
the layer input concatenated with the original embeddings) whose output is added to the Mamba layer's input. d_state
is ``mamba_d_state``; mixers are ``model.layers.{i}.mamba`` or ``model.layers.{i}.mamba_decoder.mamba`` on disk. In
vLLM each hybrid layer keeps its own attention KV cache."""

from __future__ import annotations

from ghost_vllm.families.base import Family, cfg_get, layer_kinds
from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["Zamba2Family"]


class Zamba2Family(Family):
    name = "zamba2"
    model_types = ("zamba2",)
    hf_architectures = ("Zamba2ForCausalLM",)
    ghost_architecture = "GhostZamba2ForCausalLM"
    vllm_model = "vllm.model_executor.models.zamba2:Zamba2ForCausalLM"
    ghost_vllm_model = "ghost_vllm.plugin.hybrid:GhostZamba2ForCausalLM"
    state_key = "mamba_d_state"
    projected_state = True

    def layout(self, cfg) -> InProjLayout:
        hidden = int(cfg_get(cfg, "hidden_size"))
        heads = cfg_get(cfg, "n_mamba_heads")
        head_dim = int(cfg_get(cfg, "mamba_headdim", default=64))
        if heads is None:
            heads = int(cfg_get(cfg, "mamba_expand", default=2)) * hidden // head_dim
        return InProjLayout(hidden, int(heads), head_dim, int(cfg_get(cfg, "mamba_ngroups", default=1)),
                            int(cfg_get(cfg, "mamba_d_state")), int(cfg_get(cfg, "mamba_d_conv", default=4)))

    def _hybrid(self, cfg) -> list[int]:
        kinds = layer_kinds(cfg, ("layers_block_type",))
        return [i for i, k in enumerate(kinds) if k == "hybrid"]

    def num_layers(self, cfg) -> int:
        return len(layer_kinds(cfg, ("layers_block_type",)))

    def mamba_layers(self, cfg) -> list[int]:
        return list(range(self.num_layers(cfg)))

    def attention_layers(self, cfg) -> list[int]:
        return self._hybrid(cfg)

    def attention_kv(self, cfg) -> tuple[int, int]:
        heads = int(cfg_get(cfg, "num_attention_heads"))
        head_dim = cfg_get(cfg, "attention_head_dim") or 2 * int(cfg_get(cfg, "hidden_size")) // heads
        return int(cfg_get(cfg, "num_key_value_heads", default=heads)), int(head_dim)

    def mixer_prefixes(self, cfg, layer: int) -> tuple[str, ...]:
        if layer in self._hybrid(cfg):
            return (f"model.layers.{layer}.mamba_decoder.mamba.",)
        return (f"model.layers.{layer}.mamba.",)

    def blocks(self, model):
        return model.model.layers

    def mixer(self, block):
        return block.mamba if hasattr(block, "mamba") else block.mamba_decoder.mamba
