"""Perplexity (token, word, bits per byte) over a whole text, and LAMBADA last-word accuracy.

Perplexity (the measuring rule of ``../shared/DESIGN.md`` §6): the text is tokenized once and cut into non-overlapping windows of ``seq_len`` tokens; each
window starts from a fresh state with the EOS token prepended as context, so *every* token of the text is predicted
exactly once and word perplexity / bits per byte refer to the whole text.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ghost_vllm.calib.sources import load_texts
from ghost_vllm.errors import CalibrationError

__all__ = ["PerplexityReport", "perplexity", "perplexity_of_text", "LambadaReport", "lambada_accuracy"]


@dataclass(frozen=True)
class PerplexityReport:
    source: str
    seq_len: int
    windows: int
    tokens: int
    words: int
    bytes: int
    nll_sum: float
    token_ppl: float
    word_ppl: float
    bits_per_byte: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity_of_text(
    model, tokenizer, text: str, seq_len: int = 2048, batch_size: int = 4, source: str = "<text>",
    max_tokens: Optional[int] = None, progress: bool = True,
) -> PerplexityReport:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
        text = tokenizer.decode(ids)
    if len(ids) < 1:
        raise CalibrationError(f"{source}: no tokens to evaluate")
    bos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    device = next(model.parameters()).device
    windows = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    nll = 0.0
    # batch windows of equal length; the last (shorter) one runs alone
    full = [w for w in windows if len(w) == seq_len]
    tail = [w for w in windows if len(w) != seq_len]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in tail]
    for group in tqdm(groups, desc=f"ppl {Path(source).name}", unit="batch", disable=None if progress else True, leave=False):
        x = torch.tensor([[bos] + w for w in group], device=device)
        logits = model(x, use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        ).item()
    n_words = len(text.split())
    n_bytes = len(text.encode("utf-8"))
    return PerplexityReport(
        source=source,
        seq_len=seq_len,
        windows=len(windows),
        tokens=len(ids),
        words=n_words,
        bytes=n_bytes,
        nll_sum=nll,
        token_ppl=math.exp(nll / len(ids)),
        word_ppl=math.exp(nll / max(1, n_words)),
        bits_per_byte=nll / math.log(2) / max(1, n_bytes),
    )


def perplexity(model, tokenizer, source: str, seq_len: int = 2048, **kwargs) -> PerplexityReport:
    """Perplexity of a file, directory, JSONL or named dataset (documents joined by blank lines)."""
    text = "\n\n".join(load_texts(source))
    return perplexity_of_text(model, tokenizer, text, seq_len=seq_len, source=source, **kwargs)


@dataclass(frozen=True)
class LambadaReport:
    source: str
    examples: int
    correct: int
    accuracy: float
    target_nll_mean: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def lambada_accuracy(model, tokenizer, path: str, limit: Optional[int] = None, progress: bool = True) -> LambadaReport:
    """Last-word accuracy: the target's tokens must all be the greedy argmax given the context (lm-eval style)."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "context" not in row or "target" not in row:
            raise CalibrationError(f"{path}:{lineno}: LAMBADA rows need 'context' and 'target' fields")
        rows.append(row)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise CalibrationError(f"{path}: no LAMBADA examples")
    device = next(model.parameters()).device
    correct, nll = 0, 0.0
    for row in tqdm(rows, desc="lambada", disable=None if progress else True, leave=False):
        ctx = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
        tgt = tokenizer(row["target"], add_special_tokens=False)["input_ids"]
        x = torch.tensor([ctx + tgt], device=device)
        logits = model(x, use_cache=False).logits[0, len(ctx) - 1 : -1].float()
        target = torch.tensor(tgt, device=device)
        correct += int(bool((logits.argmax(-1) == target).all()))
        nll += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
    return LambadaReport(str(path), len(rows), correct, correct / len(rows), nll / len(rows))
