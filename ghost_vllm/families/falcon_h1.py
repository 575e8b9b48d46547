"""TII Falcon-H1 (``FalconH1ForCausalLM``, model_type ``falcon_h1``): every decoder layer runs attention and a Mamba2
mixer in parallel on the same normed input. d_state is ``mamba_d_state``. µP multipliers: the mixer multiplies its
input by ``ssm_in_multiplier`` and ``in_proj``'s output by a per-section vector (``ssm_multipliers`` for z, x, B, C,
dt; the non-persistent buffer ``mup_vector``, recomputed from the config at load) — the scan sees the scaled B and C,
so the statistics are taken after both; after surgery the buffer keeps the surviving rows."""

from __future__ import annotations

from ghost_vllm.families.base import Family, cfg_get
from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["FalconH1Family"]


class FalconH1Family(Family):
    name = "falcon_h1"
    model_types = ("falcon_h1",)
    hf_architectures = ("FalconH1ForCausalLM",)
    ghost_architecture = "GhostFalconH1ForCausalLM"
    vllm_model = "vllm.model_executor.models.falcon_h1:FalconH1ForCausalLM"
    ghost_vllm_model = "ghost_vllm.plugin.hybrid:GhostFalconH1ForCausalLM"
    state_key = "mamba_d_state"

    def layout(self, cfg) -> InProjLayout:
        heads, head_dim = int(cfg_get(cfg, "mamba_n_heads")), int(cfg_get(cfg, "mamba_d_head"))
        d_ssm = cfg_get(cfg, "mamba_d_ssm")
        if d_ssm is not None and int(d_ssm) != heads * head_dim:
            raise ValueError(f"mamba_d_ssm {d_ssm} != mamba_n_heads·mamba_d_head {heads * head_dim}")
        return InProjLayout(int(cfg_get(cfg, "hidden_size")), heads, head_dim,
                            int(cfg_get(cfg, "mamba_n_groups", default=1)), int(cfg_get(cfg, "mamba_d_state")),
                            int(cfg_get(cfg, "mamba_d_conv", default=4)))

    def mamba_layers(self, cfg) -> list[int]:
        return list(range(self.num_layers(cfg)))

    def attention_layers(self, cfg) -> list[int]:
        return list(range(self.num_layers(cfg)))

    def attention_kv(self, cfg) -> tuple[int, int]:
        heads = int(cfg_get(cfg, "num_attention_heads"))
        head_dim = cfg_get(cfg, "head_dim") or int(cfg_get(cfg, "hidden_size")) // heads
        return int(cfg_get(cfg, "num_key_value_heads", default=heads)), int(head_dim)

    def mixer_prefixes(self, cfg, layer: int) -> tuple[str, ...]:
        return (f"model.layers.{layer}.mamba.",)

    def blocks(self, model):
        return model.model.layers

    def mixer(self, block):
        return block.mamba

    def refit_residual(self, block):
        return block.pre_ff_layernorm  # mixer ∥ attention, then the residual add, then the MLP

    def mixer_output_scale(self, block) -> float:
        return float(block.ssm_out_multiplier)

    def input_scale(self, mixer) -> float:
        return float(mixer.ssm_in_multiplier)

    def in_proj_scale(self, mixer):
        return mixer.mup_vector.reshape(-1)

    def after_resize(self, mixer, rows, n) -> None:
        if rows is not None:
            mixer.mup_vector = mixer.mup_vector[..., rows.to(mixer.mup_vector.device)].clone()
        mixer.groups_time_state_size = mixer.n_groups * n
