"""NVIDIA Nemotron-H (``NemotronHForCausalLM``, model_type ``nemotron_h``): blocks of one kind each — Mamba2 (M),
attention (*), MLP (-) or MoE (E) — from ``hybrid_override_pattern`` (released configs) or ``layers_block_type``
(transformers 5 writes ``linear_attention`` for Mamba2). d_state is ``ssm_state_size``; n_groups is 8 in the
released models; the gated norm is already group-wise in transformers. On disk the tensors are ``backbone.*``.
vLLM keeps the SSM state in float32 unless the config says otherwise (``NemotronHForCausalLMConfig``)."""

from __future__ import annotations

from ghost_vllm.families.base import Family, cfg_get
from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["NemotronHFamily"]


class NemotronHFamily(Family):
    name = "nemotron_h"
    model_types = ("nemotron_h",)
    hf_architectures = ("NemotronHForCausalLM",)
    ghost_architecture = "GhostNemotronHForCausalLM"
    vllm_model = "vllm.model_executor.models.nemotron_h:NemotronHForCausalLM"
    ghost_vllm_model = "ghost_vllm.plugin.hybrid:GhostNemotronHForCausalLM"
    ghost_vllm_config = "ghost_vllm.plugin.configs:GhostNemotronHConfig"  # keeps vLLM's float32 SSM state
    state_key = "ssm_state_size"
    kind_keys = ("layers_block_type", "layer_types")
    projected_state = True
    pattern_key = "hybrid_override_pattern"

    def layout(self, cfg) -> InProjLayout:
        return InProjLayout(int(cfg_get(cfg, "hidden_size")), int(cfg_get(cfg, "mamba_num_heads")),
                            int(cfg_get(cfg, "mamba_head_dim")), int(cfg_get(cfg, "n_groups", "mamba_n_groups")),
                            int(cfg_get(cfg, "ssm_state_size")),
                            int(cfg_get(cfg, "conv_kernel", "mamba_d_conv", default=4)))

    def num_layers(self, cfg) -> int:
        return len(self.kinds(cfg))

    def attention_kv(self, cfg) -> tuple[int, int]:
        heads = int(cfg_get(cfg, "num_attention_heads"))
        head_dim = cfg_get(cfg, "head_dim", "attention_head_dim") or int(cfg_get(cfg, "hidden_size")) // heads
        return int(cfg_get(cfg, "num_key_value_heads", default=heads)), int(head_dim)

    def mixer_prefixes(self, cfg, layer: int) -> tuple[str, ...]:
        return (f"backbone.layers.{layer}.mixer.", f"model.layers.{layer}.mixer.")

    def default_ssm_cache_dtype(self, cfg):
        return str(cfg_get(cfg, "mamba_ssm_cache_dtype", default="float32"))

    def blocks(self, model):
        return model.model.layers

    def mixer(self, block):
        return block.mixer if block.block_type in ("mamba", "linear_attention") else None
