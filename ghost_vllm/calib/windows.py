"""Tokenize documents into one stream and draw ``nsamples`` non-overlapping windows of ``seq_len`` tokens, seeded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ghost_vllm.errors import CalibrationError

__all__ = ["CalibrationSet", "tokenize_stream", "make_windows", "generated_windows"]


@dataclass(frozen=True)
class CalibrationSet:
    """``tokens [nsamples, seq_len]`` int64 plus what is needed to reproduce them."""

    tokens: torch.Tensor
    source: str
    seed: int
    stream_tokens: int
    sha256: str

    def spec(self) -> dict:
        n, L = self.tokens.shape
        return {
            "source": self.source,
            "nsamples": n,
            "seq_len": L,
            "seed": self.seed,
            "tokens": n * L,
            "stream_tokens": self.stream_tokens,
            "windows_sha256": self.sha256,
        }


def tokenize_stream(texts: list[str], tokenizer) -> torch.Tensor:
    """Documents → one 1-D stream of token ids, documents separated by the tokenizer's EOS when it has one."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def make_windows(texts: list[str], tokenizer, nsamples: int, seq_len: int, seed: int, source: str) -> CalibrationSet:
    stream = tokenize_stream(texts, tokenizer)
    available = stream.numel() // seq_len
    if available < nsamples:
        raise CalibrationError(
            f"{source}: {stream.numel()} tokens make {available} windows of {seq_len}, but {nsamples} were requested "
            f"({nsamples * seq_len} tokens); add text or lower --nsamples/--seq-len"
        )
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(available, generator=g)[:nsamples].sort().values
    windows = stream[: available * seq_len].view(available, seq_len)[pick].contiguous()
    digest = hashlib.sha256(windows.numpy().tobytes()).hexdigest()
    return CalibrationSet(windows, source, seed, stream.numel(), digest)


def generated_windows(source: str, nsamples: int, seq_len: int, seed: int) -> CalibrationSet:
    """Windows of a token source (``recall``: MQAR sequences from the recall model's training distribution, a seed
    stream disjoint from its evaluation's; see ghost_vllm/recall/evaluate.py)."""
    if source != "recall":
        raise CalibrationError(f"{source}: not a token source")
    from ghost_vllm.recall.evaluate import calibration_windows

    if seq_len < 4:
        raise CalibrationError(f"recall: seq_len {seq_len} is too short for one key-value pair and a query; use >= 64")
    windows = calibration_windows(nsamples, seq_len, seed)
    digest = hashlib.sha256(windows.numpy().tobytes()).hexdigest()
    return CalibrationSet(windows, source, seed, windows.numel(), digest)
