"""Pure Mamba2 (``Mamba2ForCausalLM``, model_type ``mamba2``): every layer is a Mamba2 mixer; the embedding output is
the first block's input. The only family with per-layer state budgets in vLLM (ghost_vllm.plugin.model)."""

from __future__ import annotations

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
    projected_state = True
    projected_state_served = True
    int8_state = True
    supports_backward_scoring = True

    def layout(self, cfg) -> InProjLayout:
        return InProjLayout(int(cfg_get(cfg, "hidden_size")), int(cfg_get(cfg, "num_heads")),
                            int(cfg_get(cfg, "head_dim")), int(cfg_get(cfg, "n_groups")),
                            int(cfg_get(cfg, "state_size")), int(cfg_get(cfg, "conv_kernel", default=4)))

    def mamba_layers(self, cfg) -> list[int]:
        return list(range(self.num_layers(cfg)))

    def state_sizes(self, cfg, where: str = "config.json") -> list[int]:
        from ghost_vllm.ghost_format import config_state_sizes

        return config_state_sizes(cfg, where)

    def check_config(self, cfg, where: str) -> None:
        from ghost_vllm.errors import ModelError

        for key in ("hidden_size", "num_hidden_layers", "num_heads", "head_dim", "n_groups", "state_size"):
            v = cfg.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ModelError(f"{where}: {key} = {v!r}; expected a positive integer")
        if cfg["num_heads"] % cfg["n_groups"]:
            raise ModelError(f"{where}: n_groups {cfg['n_groups']} does not divide num_heads {cfg['num_heads']}")
        expand = cfg.get("expand", 2)
        if cfg["num_heads"] * cfg["head_dim"] != int(expand * cfg["hidden_size"]):
            raise ModelError(f"{where}: num_heads·head_dim = {cfg['num_heads'] * cfg['head_dim']} but "
                             f"expand·hidden_size = {int(expand * cfg['hidden_size'])}; the config is inconsistent")

    def check_tensors(self, shapes, where) -> None:
        from ghost_vllm.errors import ModelError

        if not any(k.startswith("backbone.embedding") for k in shapes):
            raise ModelError(f"{where}: no embedding tensor (backbone.embeddings.weight) in the safetensors files")

    def load(self, model_dir, cfg, dtype: str, device: str):
        """Read tensor by tensor into the module (:func:`ghost_vllm.weights.load_mamba2`), per-layer sizes built."""
        from ghost_vllm.weights import load_mamba2

        return load_mamba2(model_dir, cfg, dtype, device)

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
