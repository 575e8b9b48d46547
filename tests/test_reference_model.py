"""The shipped reference model: weights match the model card's hash, and a short held-out slice evaluates to the
perplexity the card recorded (within 1 %)."""

from __future__ import annotations

import hashlib
import json

import pytest

from ghost_vllm.reference import MODEL_DIR, VALIDATION_TEXT


@pytest.fixture(scope="module")
def card() -> dict:
    path = MODEL_DIR / "card.json"
    assert path.is_file(), "the reference model card is missing: python benchmarks/reference_card.py"
    return json.loads(path.read_text())


def test_weights_match_the_card_hash(card):
    h = hashlib.sha256((MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert h == card["sha256"]["model.safetensors"]


def test_short_slice_perplexity_matches_the_card(card):
    from ghost_vllm.checkpoint import load_model, load_tokenizer
    from ghost_vllm.evaluate import perplexity_of_text

    s = card["slice"]
    model = load_model(MODEL_DIR)
    tok = load_tokenizer(MODEL_DIR)
    r = perplexity_of_text(model, tok, VALIDATION_TEXT.read_text(encoding="utf-8"), s["seq_len"],
                           max_tokens=s["max_tokens"], progress=False)
    assert r.tokens == s["tokens"]
    assert r.token_ppl == pytest.approx(s["token_ppl"], rel=0.01)


def test_card_meets_the_bar(card):
    assert card["heldout"]["token_ppl"] <= 150
    assert card["heldout"]["token_ppl"] < card["unigram_baseline"]["heldout"]["token_ppl"] / 2
    assert card["wikitext2_test"]["token_ppl"] < card["unigram_baseline"]["wikitext2_test"]["token_ppl"] / 2
    assert card["state_use"]["ppl_increase"] >= 0.20
    assert card["architecture"]["state_size"] == 128 and card["architecture"]["n_groups"] == 1


# the bundled hybrid (Nemotron-H-shaped, configs/hybrid-train.yaml): same checks against its own card
@pytest.fixture(scope="module")
def hybrid_card() -> dict:
    from ghost_vllm.reference import HYBRID_MODEL_DIR

    path = HYBRID_MODEL_DIR / "card.json"
    assert path.is_file(), "the hybrid model card is missing: python benchmarks/reference_card.py --model hybrid"
    return json.loads(path.read_text())


def test_hybrid_weights_and_slice_match_its_card(hybrid_card):
    from ghost_vllm.checkpoint import load_model, load_tokenizer
    from ghost_vllm.evaluate import perplexity_of_text
    from ghost_vllm.reference import HYBRID_MODEL_DIR

    h = hashlib.sha256((HYBRID_MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert h == hybrid_card["sha256"]["model.safetensors"]
    assert (HYBRID_MODEL_DIR / "model.safetensors").stat().st_size <= 30 * 2**20
    s = hybrid_card["slice"]
    model = load_model(HYBRID_MODEL_DIR, "float32")
    assert type(model).__name__ == "NemotronHForCausalLM"
    r = perplexity_of_text(model, load_tokenizer(HYBRID_MODEL_DIR), VALIDATION_TEXT.read_text(encoding="utf-8"),
                           s["seq_len"], max_tokens=s["max_tokens"], progress=False)
    assert r.tokens == s["tokens"]
    assert r.token_ppl == pytest.approx(s["token_ppl"], rel=0.01)


def test_hybrid_card_meets_the_bar(hybrid_card):
    a = hybrid_card["architecture"]
    assert a["pattern"].count("M") >= 6 and 1 <= a["pattern"].count("*") <= 2 and a["state_size"] == 128
    assert hybrid_card["heldout"]["token_ppl"] < hybrid_card["unigram_baseline"]["heldout"]["token_ppl"] / 2
    assert hybrid_card["state_use"]["ppl_increase"] >= 0.10  # attention carries part of the context here
