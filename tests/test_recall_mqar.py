"""MQAR generator: every label is the right answer by construction, checked by brute force, plus seeding."""

from __future__ import annotations

import pytest
import torch

from ghost_vllm.errors import RecipeError
from ghost_vllm.recall.mqar import FILLER, IGNORE, MQARSpec, generate, query_correct

SPECS = [
    MQARSpec(vocab_size=32, num_pairs=4, seq_len=24),
    MQARSpec(vocab_size=64, num_pairs=8, seq_len=64, num_queries=5),
    MQARSpec(vocab_size=40, num_pairs=6, seq_len=41, placement="power"),
    MQARSpec(vocab_size=17, num_pairs=8, seq_len=32),  # every key used, no room between queries
]


def _brute_force(tokens: list[int], num_pairs: int) -> tuple[dict[int, int], dict[int, int]]:
    """Scan one sequence: {position: expected label} and {position: distance} for every repeated key after the pairs."""
    value_of, where = {}, {}
    for i in range(0, 2 * num_pairs, 2):
        value_of[tokens[i]] = tokens[i + 1]  # the key's last value wins
        where[tokens[i]] = i
    labels, distance = {}, {}
    for t in range(2 * num_pairs, len(tokens)):
        if tokens[t] in value_of:
            labels[t] = value_of[tokens[t]]
            distance[t] = t - where[tokens[t]]
    return labels, distance


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"V{s.vocab_size}-P{s.num_pairs}-T{s.seq_len}-{s.placement}")
def test_labels_and_distances_match_brute_force(spec):
    b = generate(spec, 16, torch.Generator().manual_seed(1))
    B, T, Q = 16, spec.seq_len, spec.queries
    assert b.tokens.shape == b.labels.shape == (B, T) and b.tokens.dtype == b.labels.dtype == torch.int64
    assert b.query_pos.shape == b.key_pos.shape == b.distance.shape == b.answer.shape == (B, Q)
    assert b.num_pairs == spec.num_pairs
    for row in range(B):
        tokens, labels = b.tokens[row].tolist(), b.labels[row].tolist()
        want, dist = _brute_force(tokens, spec.num_pairs)
        assert {t: v for t, v in enumerate(labels) if v != IGNORE} == want
        assert dict(zip(b.query_pos[row].tolist(), b.distance[row].tolist())) == dist
        assert len(want) == Q
        for t in want:  # Zoology layout: each query key is followed by its value
            assert tokens[t + 1] == want[t]


@pytest.mark.parametrize("spec", SPECS[:3], ids=str)
def test_vocabulary_ranges_and_distinct_keys(spec):
    b = generate(spec, 32, torch.Generator().manual_seed(2))
    P = spec.num_pairs
    keys, values = b.tokens[:, 0 : 2 * P : 2], b.tokens[:, 1 : 2 * P : 2]
    assert ((keys >= 1) & (keys < spec.value_start)).all()
    assert ((values >= spec.value_start) & (values < spec.vocab_size)).all()
    assert all(len(set(row)) == P for row in keys.tolist())
    rest = b.tokens[:, 2 * P :]
    in_query = torch.zeros_like(rest, dtype=torch.bool)
    in_query.scatter_(1, b.query_pos - 2 * P, True).scatter_(1, b.query_pos - 2 * P + 1, True)
    assert (rest[~in_query] == FILLER).all()
    assert (b.query_pos[:, 1:] - b.query_pos[:, :-1] >= 2).all()  # sorted, non-overlapping slots


def test_same_seed_same_batch_different_seed_differs():
    spec = SPECS[1]
    a = generate(spec, 8, torch.Generator().manual_seed(7))
    b = generate(spec, 8, torch.Generator().manual_seed(7))
    c = generate(spec, 8, torch.Generator().manual_seed(8))
    for name in ("tokens", "labels", "query_pos", "key_pos", "distance", "answer"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.query_pos, c.query_pos)


def test_distance_varies():
    b = generate(MQARSpec(vocab_size=128, num_pairs=8, seq_len=128), 64, torch.Generator().manual_seed(3))
    assert b.distance.min() >= 2 and b.distance.max() <= 128 - 2  # last key at 2P-2 → first slot at 2P
    assert b.distance.unique().numel() > 20 and (b.distance % 2 == 0).all()


def test_num_pairs_override_for_curriculum():
    spec = MQARSpec(vocab_size=64, num_pairs=8, seq_len=64, num_queries=6)
    b = generate(spec, 4, torch.Generator().manual_seed(0), num_pairs=3)
    assert b.num_pairs == 3 and b.query_pos.shape == (4, 3)
    assert spec.with_pairs(3).queries == 3 and spec.with_pairs(16).queries == 6


def test_query_correct_from_ids_and_logits():
    b = generate(SPECS[0], 4, torch.Generator().manual_seed(0))
    perfect = torch.where(b.labels == IGNORE, 0, b.labels)
    assert query_correct(perfect, b).all()
    logits = torch.nn.functional.one_hot(perfect, SPECS[0].vocab_size).float()
    wrong = logits.clone()
    wrong[0, b.query_pos[0, 0]] = 0.0
    assert query_correct(logits, b).all() and query_correct(wrong, b).sum() == b.answer.numel() - 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab_size=16, num_pairs=8, seq_len=64), "fewer than num_pairs=8"),
        (dict(vocab_size=64, num_pairs=8, seq_len=30), "use seq_len >= 32"),
        (dict(vocab_size=64, num_pairs=4, seq_len=64, num_queries=5), "num_queries: 5"),
        (dict(vocab_size=64, num_pairs=4, seq_len=64, placement="gauss"), "allowed: uniform, power"),
    ],
)
def test_invalid_spec_says_how_to_fix(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        MQARSpec(**kwargs)
