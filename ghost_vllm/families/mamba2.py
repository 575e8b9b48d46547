"""Pure Mamba2 (``Mamba2ForCausalLM``, model_type ``mamba2``): every layer is a Mamba2 mixer; the embedding output is
the first block's input. The only family with per-layer state budgets in vLLM (ghost_vllm.plugin.model)."""

from __future__ import annotations

from typing import Any, Optional

from ghost_vllm.families.base import Family, cfg_get
from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["Mamba2Family"]


class Mamba2Family(Family):
    name = "mamba2"
    model_types = ("mamba2",)
    hf_architectures = ("Mamba2ForCausalLM",)
    ghost_architecture = "GhostMamba2ForCausalLM"
    vllm_model = "vllm.model_executor.models.mamba2:Mamba2ForCausalLM"
    ghost_vllm_model = "ghost_vllm.plugin.model:GhostMamba2ForCausalLM"
    ghost_vllm_config = "ghost_vllm.plugin.model:GhostMambaModelConfig"
    state_key = "state_size"
    per_layer_budgets = True
    supports_backward_scoring = True
    supports_refit = True

    def layout(self, cfg) -> InProjLayout:
        return InProjLayout(int(cfg_get(cfg, "hidden_size")), int(cfg_get(cfg, "num_heads")),
                            int(cfg_get(cfg, "head_dim")), int(cfg_get(cfg, "n_groups")),
                            int(cfg_get(cfg, "state_size")), int(cfg_get(cfg, "conv_kernel", default=4)))

    def mamba_layers(self, cfg) -> list[int]:
        return list(range(self.num_layers(cfg)))

    def state_sizes(self, cfg, where: str = "config.json") -> list[int]:
        from ghost_vllm.mamba.budgets import config_state_sizes

        return config_state_sizes(cfg, where)

    def mixer_prefixes(self, cfg, layer: int) -> tuple[str, ...]:
        return (f"backbone.layers.{layer}.mixer.",)

    def blocks(self, model):
        return model.backbone.layers

    def mixer(self, block):
        return block.mixer

    def embeddings(self, model):
        return model.backbone.embeddings

    def prepare_model(self, model) -> None:
        from ghost_vllm.mamba.norm import patch_group_norm

        patch_group_norm(model)  # transformers normalises over all groups; mamba_ssm and vLLM per group
