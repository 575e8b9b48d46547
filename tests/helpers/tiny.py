"""Tiny random Mamba2 models for tests (CPU, fp32, seeded). Weights are perturbed away from the default init so that
every parameter matters: A, dt_bias, D and the norm weights differ per head/channel."""

from __future__ import annotations

import torch

__all__ = ["tiny_config", "tiny_model"]


def tiny_config(
    *,
    n_groups: int = 1,
    state_size: int = 16,
    hidden_size: int = 32,
    head_dim: int = 8,
    num_hidden_layers: int = 2,
    vocab_size: int = 96,
    chunk_size: int = 8,
    conv_kernel: int = 4,
):
    from transformers import Mamba2Config

    expand = 2
    return Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        state_size=state_size,
        head_dim=head_dim,
        num_heads=expand * hidden_size // head_dim,
        n_groups=n_groups,
        expand=expand,
        conv_kernel=conv_kernel,
        chunk_size=chunk_size,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def tiny_model(seed: int = 0, **kwargs):
    """A random ``Mamba2ForCausalLM`` in eval mode; ``kwargs`` go to :func:`tiny_config`."""
    from transformers import Mamba2ForCausalLM

    cfg = tiny_config(**kwargs)
    torch.manual_seed(seed)
    model = Mamba2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.backbone.layers:
            m = layer.mixer
            H = m.num_heads
            m.A_log.copy_(torch.log(torch.linspace(0.5, 4.0, H)) + 0.1 * torch.randn(H, generator=g))
            m.dt_bias.copy_(torch.randn(H, generator=g) * 0.5 - 1.0)
            m.D.copy_(1.0 + 0.3 * torch.randn(H, generator=g))
            m.norm.weight.copy_(1.0 + 0.2 * torch.randn(m.norm.weight.shape, generator=g))
            m.in_proj.weight.mul_(3.0)  # larger B/C so the state carries signal
    return model


def tiny_tokenizer(vocab_size: int = 320, text: str | None = None):
    """A byte-level BPE trained in milliseconds on ``text`` (default: a slice of the bundled calibration text)."""
    from ghost_vllm.reference.tokenizer import train_bpe

    if text is None:
        from ghost_vllm.reference import CALIBRATION_TEXT

        text = CALIBRATION_TEXT.read_text(encoding="utf-8")[:200_000]
    return train_bpe([text], vocab_size)


def save_tiny_checkpoint(path, seed: int = 0, dtype=None, **kwargs):
    """Write a tiny random Mamba2 (HF layout, safetensors) with a matching tokenizer to ``path``; return the model."""
    from pathlib import Path

    tok = tiny_tokenizer(kwargs.pop("vocab_size", 320))
    model = tiny_model(seed=seed, vocab_size=len(tok), **kwargs)
    if dtype is not None:
        model = model.to(dtype)
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return model
