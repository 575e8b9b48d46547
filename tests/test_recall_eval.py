"""Recall: the generator's labels by brute-force lookup, the evaluator on an oracle and a constant answer, the
bundled recall model (card vs a fresh measurement), `--calibration recall`, `ghost-vllm eval --recall`, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from ghost_vllm.cli import main as cli
from ghost_vllm.recall.evaluate import (
    LEVELS,
    calibration_windows,
    oracle_predictions,
    recall_accuracy,
    task_spec,
)
from ghost_vllm.recall.mqar import IGNORE, MQARSpec, generate


@pytest.mark.parametrize("spec", [task_spec(8), task_spec(64), MQARSpec(vocab_size=64, num_pairs=5, seq_len=40,
                                                                        num_queries=3, placement="power")])
def test_every_label_is_what_a_lookup_finds(spec):
    batch = generate(spec, 32, torch.Generator().manual_seed(7))
    lookup = oracle_predictions(batch)
    mask = batch.labels != IGNORE
    assert int(mask.sum()) == 32 * spec.queries
    assert torch.equal(lookup[mask], batch.labels[mask])


def test_evaluator_scores_an_oracle_at_one_and_a_constant_at_chance():
    report = recall_accuracy(_lookup, sequences=32)
    assert report.accuracy == 1.0 and set(report.per_pairs) == set(LEVELS)
    assert all(v == 1.0 for v in report.per_pairs.values()) and all(v == 1.0 for v in report.per_distance.values())
    const = recall_accuracy(lambda t: torch.full_like(t, 300), sequences=64)
    sd = (const.chance * (1 - const.chance) / const.queries) ** 0.5
    assert abs(const.accuracy - const.chance) < 5 * sd and const.chance == pytest.approx(1 / 256)


def _lookup(tokens: torch.Tensor) -> torch.Tensor:
    """The oracle from the tokens alone: keys live in [1, 256), a key's value is the token after its first use."""
    out = torch.full_like(tokens, -1)
    for b, row in enumerate(tokens.tolist()):
        table = {}
        for t in range(len(row) - 1):
            if 1 <= row[t] < 256:
                if row[t] in table:
                    out[b, t] = table[row[t]]
                else:
                    table[row[t]] = row[t + 1]
    return out


def test_calibration_windows_are_not_evaluation_sequences():
    calib = calibration_windows(16, 512)
    assert calib.shape == (16, 512) and int(calib.max()) < 512
    evals = generate(task_spec(64), 256, torch.Generator().manual_seed((1 << 40) + 64)).tokens
    assert not any(torch.equal(c, e) for c in calib for e in evals[:64])


def test_bundled_recall_model_and_its_card(capsys, tmp_path):
    from ghost_vllm.recall import MODEL_DIR

    card = json.loads((MODEL_DIR / "card.json").read_text())
    assert card["dense"]["accuracy"] >= 0.95
    lost = [card["dense"]["accuracy"] - r["accuracy"] for r in card["random16"]]
    assert min(lost) >= 0.40  # the task needs the state
    assert (MODEL_DIR / "train_log.jsonl").is_file() and (MODEL_DIR / "README.md").is_file()
    assert sum(f.stat().st_size for f in MODEL_DIR.iterdir()) < 10 * 2**20
    out = tmp_path / "eval.json"
    assert cli(["eval", "recall", "--recall", "--recall-sequences", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["accuracy"] == report["recall"]["accuracy"] >= 0.95
    assert set(report["recall"]["per_pairs"]) == {str(p) for p in LEVELS}
    for p in LEVELS:  # a fresh measurement agrees with the shipped card
        assert report["recall"]["per_pairs"][str(p)] == pytest.approx(card["dense"]["per_pairs"][str(p)], abs=0.03)
    assert "MQAR recall: accuracy" in capsys.readouterr().out


def test_prune_with_recall_calibration_and_evaluate(tmp_path):
    out = tmp_path / "recall-ghost50"
    assert cli(["prune", "--model", "recall", "--calibration", "recall", "--nsamples", "16", "--seq-len", "256",
                "--sparsity", "0.5", "--out", str(out), "--no-progress", "--allocation", "uniform"]) == 0
    g = json.loads((out / "ghost.json").read_text())
    assert g["calibration"]["source"] == "recall" and g["calibration"]["seq_len"] == 256
    assert g["state_size"] == 64
    js = tmp_path / "r.json"
    assert cli(["eval", str(out), "--recall", "--recall-sequences", "32", "--json", str(js)]) == 0
    assert 0.5 < json.loads(js.read_text())["accuracy"] <= 1.0


@pytest.mark.parametrize("argv,message", [
    (["eval", "reference", "--recall"], "MQAR needs the recall model's 512 tokens"),
    (["prune", "--model", "reference", "--calibration", "recall", "--out", "/tmp/never-written-recall"],
     "use it with --model recall"),
    (["eval", "recall", "--recall", "--recall-sequences", "0"], "must be >= 1"),
])
def test_recall_bad_input(capsys, argv, message):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
