"""Calibration sources and seeded windows."""

import json

import pytest
import torch

from ghost_vllm.calib import load_texts, make_windows
from ghost_vllm.errors import CalibrationError
from tests.helpers.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_sources_file_dir_jsonl(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("alpha text")
    (tmp_path / "d" / "b.txt").write_text("beta text")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert load_texts(str(tmp_path / "d")) == ["alpha text", "beta text"]
    assert load_texts(str(tmp_path / "c.jsonl")) == ["one", "two"]
    assert len(load_texts("reference")[0]) > 100_000


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "contains no text"),
        (b"\x00\x01\x02binary", "binary file"),
        (b"caf\xe9 latin-1", "not UTF-8"),
    ],
)
def test_bad_text_files(tmp_path, content, message):
    p = tmp_path / "x.txt"
    p.write_bytes(content)
    with pytest.raises(CalibrationError, match=message):
        load_texts(str(p))


def test_bad_jsonl(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"txt": "no"}\n')
    with pytest.raises(CalibrationError, match="x.jsonl:1: no string 'text' field"):
        load_texts(str(p))


def test_windows_are_seeded_distinct_and_sized(tok):
    texts = load_texts("reference")
    a = make_windows(texts, tok, 16, 32, 0, "reference")
    b = make_windows(texts, tok, 16, 32, 0, "reference")
    c = make_windows(texts, tok, 16, 32, 1, "reference")
    assert a.tokens.shape == (16, 32) and a.tokens.dtype == torch.long
    assert torch.equal(a.tokens, b.tokens) and a.sha256 == b.sha256
    assert not torch.equal(a.tokens, c.tokens)
    assert len({tuple(w.tolist()) for w in a.tokens}) == 16
    assert a.spec()["tokens"] == 512 and a.spec()["seed"] == 0


def test_too_little_text_says_how_much_there_is(tok):
    with pytest.raises(CalibrationError, match=r"tokens make \d+ windows of 64, but 1000 were requested"):
        make_windows(["a short text " * 20], tok, 1000, 64, 0, "short")


def test_wikitext2_without_datasets_names_the_extra(monkeypatch, tmp_path):
    """The real-model recipes calibrate on 'wikitext2'; without the optional package the error names the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as on an install without the [hub] extra
    monkeypatch.chdir(tmp_path)  # no local file called wikitext2
    with pytest.raises(CalibrationError, match=r"calibration 'wikitext2' needs .* pip install 'ghost-vllm\[hub\]'"):
        load_texts("wikitext2")
