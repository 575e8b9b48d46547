"""Exact-match recall accuracy on held-out MQAR sequences, overall and per difficulty (number of pairs; distance
between a pair and its query), for any checkpoint of the recall model — dense or pruned, uniform or per-layer.

Held-out: every level draws from its own fixed seed stream (``EVAL_SEED_BASE + pairs``), disjoint from the training
batches (``seed << 32 | step``) and from calibration (``CALIB_SEED_BASE``). The task follows training: vocabulary
512, sequence length ``max(64, 8 · pairs)``, every key queried once at a uniformly drawn slot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ghost_vllm.recall.mqar import MQARBatch, MQARSpec, generate, query_correct

__all__ = ["RecallReport", "LEVELS", "DISTANCE_BUCKETS", "EVAL_SEED_BASE", "CALIB_SEED_BASE", "task_spec",
           "recall_accuracy", "model_predictor", "oracle_predictions"]

LEVELS = (8, 16, 32, 48, 64)  # pairs per sequence
DISTANCE_BUCKETS = ((1, 64), (65, 128), (129, 256), (257, 512))  # tokens between storing a key and its query
EVAL_SEED_BASE = 1 << 40
CALIB_SEED_BASE = 1 << 41
VOCAB = 512


def task_spec(pairs: int, vocab_size: int = VOCAB) -> MQARSpec:
    return MQARSpec(vocab_size=vocab_size, num_pairs=pairs, seq_len=max(64, 8 * pairs))


@dataclass
class RecallReport:
    accuracy: float  # all queries of all levels
    queries: int
    per_pairs: dict[int, float] = field(default_factory=dict)
    per_distance: dict[str, float] = field(default_factory=dict)
    sequences_per_level: int = 0
    chance: float = 0.0  # a constant answer's expected accuracy

    def to_dict(self) -> dict:
        return asdict(self)


def oracle_predictions(batch: MQARBatch) -> torch.Tensor:
    """Brute-force lookup: at every position, the value that followed the same token earlier in the pairs region
    (-1 where the token is no key). Independent of the generator's bookkeeping."""
    out = torch.full_like(batch.tokens, -1)
    for b in range(batch.tokens.shape[0]):
        row = batch.tokens[b].tolist()
        table = {row[2 * i]: row[2 * i + 1] for i in range(batch.num_pairs)}
        for t in range(2 * batch.num_pairs, len(row)):
            if row[t] in table:
                out[b, t] = table[row[t]]
    return out


def model_predictor(model, batch_size: int = 64) -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens [B, T] → argmax ids [B, T] of a causal LM (full-sequence forward, no cache)."""

    @torch.no_grad()
    def predict(tokens: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        outs = [model(t.to(device), use_cache=False).logits.argmax(-1).cpu() for t in tokens.split(batch_size)]
        return torch.cat(outs)

    return predict


def recall_accuracy(predict: Callable[[torch.Tensor], torch.Tensor], sequences: int = 256,
                    levels: Sequence[int] = LEVELS, vocab_size: int = VOCAB,
                    progress: Optional[Callable[[int], None]] = None) -> RecallReport:
    """Score ``predict`` on ``sequences`` held-out sequences per level."""
    correct = total = 0
    per_pairs: dict[int, float] = {}
    dist_ok = {b: [0, 0] for b in DISTANCE_BUCKETS}
    for pairs in levels:
        spec = task_spec(pairs, vocab_size)
        batch = generate(spec, sequences, torch.Generator().manual_seed(EVAL_SEED_BASE + pairs))
        ok = query_correct(predict(batch.tokens), batch)  # [B, Q]
        per_pairs[pairs] = float(ok.float().mean())
        correct += int(ok.sum())
        total += ok.numel()
        for lo, hi in DISTANCE_BUCKETS:
            sel = (batch.distance >= lo) & (batch.distance <= hi)
            dist_ok[(lo, hi)][0] += int(ok[sel].sum())
            dist_ok[(lo, hi)][1] += int(sel.sum())
        if progress is not None:
            progress(pairs)
    per_distance = {f"{lo}-{hi}": c / n for (lo, hi), (c, n) in dist_ok.items() if n}
    num_values = vocab_size - task_spec(levels[0], vocab_size).value_start
    return RecallReport(correct / total, total, per_pairs, per_distance, sequences, 1.0 / num_values)


def calibration_windows(nsamples: int, seq_len: int, seed: int = 0, vocab_size: int = VOCAB) -> torch.Tensor:
    """``[nsamples, seq_len]`` MQAR sequences from the training distribution (pairs = seq_len // 8, at most 64, at
    least 1), drawn from a seed stream disjoint from the evaluation's."""
    pairs = max(1, min(64, seq_len // 8))
    spec = MQARSpec(vocab_size=vocab_size, num_pairs=pairs, seq_len=seq_len)
    return generate(spec, nsamples, torch.Generator().manual_seed(CALIB_SEED_BASE + seed)).tokens
