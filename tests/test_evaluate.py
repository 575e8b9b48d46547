"""Perplexity and LAMBADA against independent computations on a tiny model."""

import json
import math

import pytest
import torch

from ghost_vllm.evaluate import lambada_accuracy, perplexity_of_text
from tests.helpers.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_perplexity_matches_manual_window_loop(tok):
    model = tiny_model(vocab_size=len(tok))
    text = "The quick brown fox jumps over the lazy dog . " * 12
    r = perplexity_of_text(model, tok, text, seq_len=16, batch_size=3, progress=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll = 0.0
    with torch.no_grad():
        for i in range(0, len(ids), 16):  # one window at a time, eos prepended
            x = torch.tensor([[tok.eos_token_id] + ids[i : i + 16]])
            logp = model(x).logits.log_softmax(-1)[0, :-1]
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
    assert r.tokens == len(ids) and r.windows == math.ceil(len(ids) / 16)
    assert r.token_ppl == pytest.approx(math.exp(nll / len(ids)), rel=1e-5)
    assert r.word_ppl == pytest.approx(math.exp(nll / len(text.split())), rel=1e-5)
    assert r.bits_per_byte == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)


def test_lambada_counts_greedy_matches(tok, tmp_path):
    model = tiny_model(vocab_size=len(tok))
    rows = [{"context": "the cat sat on the", "target": " mat"}, {"context": "one two three", "target": " four"}]
    p = tmp_path / "l.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    r = lambada_accuracy(model, tok, str(p), progress=False)
    expected = 0
    with torch.no_grad():
        for row in rows:
            c = tok(row["context"], add_special_tokens=False)["input_ids"]
            t = tok(row["target"], add_special_tokens=False)["input_ids"]
            pred = model(torch.tensor([c + t])).logits[0, len(c) - 1 : -1].argmax(-1).tolist()
            expected += int(pred == t)
    assert r.examples == 2 and r.correct == expected
