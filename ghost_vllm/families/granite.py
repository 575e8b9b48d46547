"""IBM Granite-4.0-H (``GraniteMoeHybridForCausalLM``, model_type ``granitemoehybrid``): each decoder layer holds a
Mamba2 mixer (``mamba``) or attention (``self_attn``), then a MoE / shared MLP; ``layer_types`` says which
(``mamba``/``attention``, or transformers 5's ``linear_attention``/``full_attention``). d_state is
``mamba_d_state``; embeddings are scaled by ``embedding_multiplier`` and residual branches by
``residual_multiplier`` — outside the mixer, so the pipeline's captured block inputs already carry them."""

from __future__ import annotations

from ghost_vllm.families.base import Family, cfg_get
from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["GraniteHybridFamily"]


class GraniteHybridFamily(Family):
    name = "granitemoehybrid"
    model_types = ("granitemoehybrid",)
    hf_architectures = ("GraniteMoeHybridForCausalLM",)
    ghost_architecture = "GhostGraniteMoeHybridForCausalLM"
    vllm_model = "vllm.model_executor.models.granitemoehybrid:GraniteMoeHybridForCausalLM"
    ghost_vllm_model = "ghost_vllm.plugin.hybrid:GhostGraniteMoeHybridForCausalLM"
    state_key = "mamba_d_state"
    projected_state = True
    kind_keys = ("layer_types", "layers_block_type")

    def layout(self, cfg) -> InProjLayout:
        return InProjLayout(int(cfg_get(cfg, "hidden_size")), int(cfg_get(cfg, "mamba_n_heads")),
                            int(cfg_get(cfg, "mamba_d_head")), int(cfg_get(cfg, "mamba_n_groups", default=1)),
                            int(cfg_get(cfg, "mamba_d_state")), int(cfg_get(cfg, "mamba_d_conv", default=4)))

    def attention_kv(self, cfg) -> tuple[int, int]:
        heads = int(cfg_get(cfg, "num_attention_heads"))
        return int(cfg_get(cfg, "num_key_value_heads", default=heads)), int(cfg_get(cfg, "hidden_size")) // heads

    def mixer_prefixes(self, cfg, layer: int) -> tuple[str, ...]:
        return (f"model.layers.{layer}.mamba.",)

    def blocks(self, model):
        return model.model.layers

    def mixer(self, block):
        return getattr(block, "mamba", None)

    def refit_residual(self, block):
        return block.post_attention_layernorm  # the MoE / shared MLP follows the mixer in the same layer

    def mixer_output_scale(self, block) -> float:
        return float(block.residual_multiplier)
