"""Tiny random hybrid models for tests (CPU, fp32, seeded): the real layer pattern of each family (some attention,
some Mamba2), attention head size 32 (vLLM's CPU attention rejects 16), d_state 16. Mamba weights are perturbed as in
:mod:`tests.helpers.tiny` so that every state channel carries signal."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["TINY_FAMILIES", "tiny_hybrid_config", "tiny_hybrid_model", "save_tiny_hybrid"]

_COMMON = dict(bos_token_id=0, eos_token_id=0, pad_token_id=1, initializer_range=0.1)


def _nemotron_h(vocab: int, state: int) -> Any:
    from transformers import NemotronHConfig

    return NemotronHConfig(vocab_size=vocab, hidden_size=64, hybrid_override_pattern="M-M*-M", num_attention_heads=2,
                           num_key_value_heads=1, head_dim=32, intermediate_size=96, ssm_state_size=state,
                           mamba_num_heads=8, mamba_head_dim=16, n_groups=2, expand=2, conv_kernel=4, chunk_size=8,
                           tie_word_embeddings=False, max_position_embeddings=512, **_COMMON)


def _granite(vocab: int, state: int) -> Any:
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=4,
                                  layer_types=["mamba", "attention", "mamba", "mamba"], num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=96, shared_intermediate_size=96,
                                  num_local_experts=4, num_experts_per_tok=2, mamba_d_state=state, mamba_n_heads=8,
                                  mamba_d_head=16, mamba_n_groups=1, mamba_expand=2, mamba_d_conv=4,
                                  mamba_chunk_size=8, position_embedding_type="nope", embedding_multiplier=2.0,
                                  residual_multiplier=0.5, attention_multiplier=1 / 32, logits_scaling=2.0,
                                  tie_word_embeddings=True, max_position_embeddings=512, **_COMMON)


def _falcon_h1(vocab: int, state: int) -> Any:
    from transformers import FalconH1Config

    return FalconH1Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=32, intermediate_size=96, mamba_d_state=state,
                          mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_ssm=128, mamba_d_conv=4,
                          mamba_chunk_size=8, mamba_rms_norm=True, mamba_norm_before_gate=False,
                          ssm_multipliers=[0.9, 1.1, 1.3, 0.7, 1.2], ssm_in_multiplier=1.25, ssm_out_multiplier=0.8,
                          attention_in_multiplier=1.1, attention_out_multiplier=0.9, key_multiplier=1.2,
                          mlp_multipliers=[1.1, 0.9], embedding_multiplier=1.5, lm_head_multiplier=0.8,
                          tie_word_embeddings=False, max_position_embeddings=512, **_COMMON)


def _zamba2(vocab: int, state: int) -> Any:
    from transformers import Zamba2Config

    return Zamba2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=4,
                        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], num_attention_heads=4,
                        num_key_value_heads=4, attention_head_dim=32, intermediate_size=96, mamba_d_state=state,
                        n_mamba_heads=8, mamba_headdim=16, mamba_ngroups=1, mamba_expand=2, mamba_d_conv=4,
                        chunk_size=8, num_mem_blocks=1, use_shared_attention_adapter=False, adapter_rank=8,
                        use_mem_rope=True, tie_word_embeddings=True, max_position_embeddings=512, **_COMMON)


TINY_FAMILIES: dict[str, Callable[[int, int], Any]] = {
    "nemotron_h": _nemotron_h, "granitemoehybrid": _granite, "falcon_h1": _falcon_h1, "zamba2": _zamba2,
}


def tiny_hybrid_config(model_type: str, vocab_size: int = 320, state_size: int = 16):
    return TINY_FAMILIES[model_type](vocab_size, state_size)


def tiny_hybrid_model(model_type: str, seed: int = 0, vocab_size: int = 320, state_size: int = 16):
    """A random model of the family in eval mode, fp32, its Mamba2 mixers perturbed (A, dt_bias, D, norm, B/C)."""
    from transformers import AutoModelForCausalLM

    from ghost_vllm.families import family_for_config

    cfg = tiny_hybrid_config(model_type, vocab_size, state_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    family = family_for_config(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in family.blocks(model):
            m = family.mixer(block)
            if m is None:
                continue
            H = m.A_log.numel()
            m.A_log.copy_(torch.log(torch.linspace(0.5, 4.0, H)) + 0.1 * torch.randn(H, generator=g))
            m.dt_bias.copy_(torch.randn(H, generator=g) * 0.5 - 1.0)
            m.D.copy_(1.0 + 0.3 * torch.randn(H, generator=g))
            if hasattr(m.norm, "weight"):
                m.norm.weight.copy_(1.0 + 0.2 * torch.randn(m.norm.weight.shape, generator=g))
            m.in_proj.weight.mul_(3.0)
    return model


def save_tiny_hybrid(path: Path, model_type: str, seed: int = 0, state_size: int = 16):
    """Write a tiny random model of the family (HF layout, safetensors, fp32) with a matching tokenizer."""
    from tests.helpers.tiny import tiny_tokenizer

    tok = tiny_tokenizer(320)
    model = tiny_hybrid_model(model_type, seed=seed, vocab_size=len(tok), state_size=state_size)
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return model
