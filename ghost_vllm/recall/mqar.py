"""Multi-query associative recall (MQAR; Arora et al., "Zoology", 2023), generated on the fly.

One sequence of length ``T`` with ``P`` key-value pairs and ``Q`` queries looks like::

    k_0 v_0 k_1 v_1 ... k_{P-1} v_{P-1} | 0 0 q_a w_a 0 q_b w_b 0 0 0 ... 0
    <--------- 2P tokens: the pairs ---> <------ T - 2P tokens: queries + filler ------>

* keys are ``P`` distinct tokens from the key range, values are drawn (with repetition) from the disjoint value range,
  and token 0 is the filler between queries;
* every query ``q`` repeats one earlier key (each key at most once, in random order) and is followed by its value
  ``w``, as in Zoology; queries sit on random even offsets of the query region, so recall distance varies;
* ``labels[b, t]`` is ``-100`` except at query positions, where it is the value the key was paired with: a causal LM
  reading ``tokens[b, :t+1]`` must output ``labels[b, t]``.

Vocabulary: ``0`` filler | ``[1, 1 + K)`` keys | ``[1 + K, vocab_size)`` values, with ``K = (vocab_size - 1) // 2``.
Randomness comes only from the ``torch.Generator`` passed in; the same generator state gives the same batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from ghost_vllm.errors import RecipeError

__all__ = ["FILLER", "IGNORE", "MQARSpec", "MQARBatch", "generate", "query_correct"]

FILLER = 0
"""Token id between queries (Zoology fills the query region with zeros)."""
IGNORE = -100
"""Label of every position that is not a query (``torch.nn.functional.cross_entropy``'s default ``ignore_index``)."""

Placement = Literal["uniform", "power"]


@dataclass(frozen=True)
class MQARSpec:
    """The task: vocabulary, pairs, length and where the queries go.

    ``num_queries=None`` queries every key once. ``placement="uniform"`` draws the query slots uniformly from the query
    region; ``"power"`` draws slot ``s`` (0 = right after the pairs) with weight ``power_a * (s + 1) ** (power_a - 1)``
    as Zoology does, which favours short gaps.
    """

    vocab_size: int = 512
    num_pairs: int = 8
    seq_len: int = 128
    num_queries: int | None = None
    placement: Placement = "uniform"
    power_a: float = 0.01

    def __post_init__(self) -> None:
        where = "MQARSpec"
        if self.num_pairs < 1:
            raise RecipeError(f"{where}.num_pairs: {self.num_pairs} must be >= 1")
        if self.num_keys < self.num_pairs:
            raise RecipeError(
                f"{where}.vocab_size: {self.vocab_size} gives {self.num_keys} distinct keys, fewer than num_pairs="
                f"{self.num_pairs}; use vocab_size >= {2 * self.num_pairs + 1}"
            )
        q = self.queries
        if q < 1 or q > self.num_pairs:
            raise RecipeError(f"{where}.num_queries: {q} must be in [1, num_pairs={self.num_pairs}]")
        if q > self.num_slots:
            raise RecipeError(
                f"{where}.seq_len: {self.seq_len} leaves {self.num_slots} query slots after {self.num_pairs} pairs, "
                f"fewer than {q} queries; use seq_len >= {2 * self.num_pairs + 2 * q}"
            )
        if self.placement not in ("uniform", "power"):
            raise RecipeError(f"{where}.placement: {self.placement!r}; allowed: uniform, power")
        if not self.power_a > 0:
            raise RecipeError(f"{where}.power_a: {self.power_a} must be > 0")

    @property
    def num_keys(self) -> int:
        """Size of the key range ``[1, 1 + num_keys)``."""
        return (self.vocab_size - 1) // 2

    @property
    def value_start(self) -> int:
        """First value token; values are ``[value_start, vocab_size)``."""
        return 1 + self.num_keys

    @property
    def queries(self) -> int:
        """Queries per sequence (``num_queries`` resolved)."""
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def num_slots(self) -> int:
        """Two-token query slots (key, value) that fit after the pairs."""
        return (self.seq_len - 2 * self.num_pairs) // 2

    def with_pairs(self, num_pairs: int) -> "MQARSpec":
        """The same task with ``num_pairs`` pairs (a curriculum stage); ``num_queries`` is capped to fit."""
        q = None if self.num_queries is None else min(self.num_queries, num_pairs)
        return dataclasses.replace(self, num_pairs=num_pairs, num_queries=q)


@dataclass(frozen=True)
class MQARBatch:
    """A generated batch. ``B`` sequences, ``T`` tokens, ``Q`` queries per sequence.

    ``tokens``    [B, T] int64  input ids
    ``labels``    [B, T] int64  value to predict at each query position, ``IGNORE`` elsewhere
    ``query_pos`` [B, Q] int64  position of each query key (sorted ascending per row)
    ``key_pos``   [B, Q] int64  position of the same key in the pairs (``2 * pair index``)
    ``distance``  [B, Q] int64  ``query_pos - key_pos``: tokens between storing the key and asking for it
    ``answer``    [B, Q] int64  the value to recall, ``labels.gather(1, query_pos)``
    ``num_pairs`` int           pairs in every sequence of this batch
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    query_pos: torch.Tensor
    key_pos: torch.Tensor
    distance: torch.Tensor
    answer: torch.Tensor
    num_pairs: int


def _query_slots(spec: MQARSpec, batch_size: int, g: torch.Generator) -> torch.Tensor:
    """Distinct slot indices in ``[0, num_slots)``, sorted per row: [B, Q] int64."""
    S, Q = spec.num_slots, spec.queries
    if spec.placement == "uniform":
        slots = torch.rand(batch_size, S, generator=g).argsort(dim=1)[:, :Q]
    else:
        s = torch.arange(1, S + 1, dtype=torch.float64)
        w = spec.power_a * s ** (spec.power_a - 1)
        slots = torch.multinomial(w.expand(batch_size, S), Q, replacement=False, generator=g)
    return slots.sort(dim=1).values


def generate(
    spec: MQARSpec, batch_size: int, generator: torch.Generator, *, num_pairs: int | None = None
) -> MQARBatch:
    """Draw ``batch_size`` MQAR sequences; ``num_pairs`` overrides ``spec.num_pairs`` for this batch (curriculum)."""
    if num_pairs is not None and num_pairs != spec.num_pairs:
        spec = spec.with_pairs(num_pairs)
    B, T, P, Q = batch_size, spec.seq_len, spec.num_pairs, spec.queries
    g = generator

    keys = torch.rand(B, spec.num_keys, generator=g).argsort(dim=1)[:, :P] + 1  # [B, P] distinct per row
    values = torch.randint(spec.value_start, spec.vocab_size, (B, P), generator=g)  # [B, P]
    asked = torch.rand(B, P, generator=g).argsort(dim=1)[:, :Q]  # [B, Q] which pair each query asks for
    query_pos = 2 * P + 2 * _query_slots(spec, B, g)  # [B, Q]

    tokens = torch.full((B, T), FILLER, dtype=torch.int64)
    tokens[:, 0 : 2 * P : 2] = keys
    tokens[:, 1 : 2 * P : 2] = values
    answer = values.gather(1, asked)  # [B, Q]
    tokens.scatter_(1, query_pos, keys.gather(1, asked))
    tokens.scatter_(1, query_pos + 1, answer)
    labels = torch.full((B, T), IGNORE, dtype=torch.int64)
    labels.scatter_(1, query_pos, answer)
    key_pos = 2 * asked
    return MQARBatch(
        tokens=tokens,
        labels=labels,
        query_pos=query_pos,
        key_pos=key_pos,
        distance=query_pos - key_pos,
        answer=answer,
        num_pairs=P,
    )


def query_correct(predictions: torch.Tensor, batch: MQARBatch) -> torch.Tensor:
    """Per-query correctness [B, Q] bool from predicted ids [B, T] or logits [B, T, V] (argmax is taken)."""
    if predictions.ndim == 3:
        predictions = predictions.argmax(dim=-1)
    return predictions.gather(1, batch.query_pos) == batch.answer
