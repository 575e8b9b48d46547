"""Byte-level BPE tokenizers in Hugging Face format (the reference model's, and the tiny ones tests use)."""

from __future__ import annotations

from typing import Iterable

__all__ = ["train_bpe"]


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE with ``<|endoftext|>`` (id 0, eos/bos) and ``<|padding|>`` (id 1, pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|padding|>"
    )
