"""Read calibration/evaluation text: a plain-text file, a directory of ``.txt`` files, a JSONL file with a ``text``
field, the bundled ``reference`` held-out split, or a Hugging Face dataset name (``wikitext2``) when online."""

from __future__ import annotations

import json
from pathlib import Path

from ghost_vllm.errors import CalibrationError

__all__ = ["NAMED_SOURCES", "TOKEN_SOURCES", "EVALUATION_SOURCES", "resolve_source", "load_texts", "check_source"]

# name → (HF dataset, config, split), read with the optional `datasets` package when the machine is online
HF_DATASETS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "train"),
    "wikitext2-test": ("wikitext", "wikitext-2-raw-v1", "test"),
}
NAMED_SOURCES = ("reference", "reference-valid", "recall", *HF_DATASETS)
TOKEN_SOURCES = ("recall",)  # sources that generate token windows directly (no text, no tokenizer)
# evaluation-only splits → the calibration source to use instead (calibrating on the text you evaluate on flatters)
EVALUATION_SOURCES = {"reference-valid": "reference", "wikitext2-test": "wikitext2"}


def resolve_source(source: str) -> str:
    """Bundled names → their paths (``reference``: the reference model's calibration half of the held-out articles,
    ``reference-valid``: the other half, for evaluation); anything else unchanged."""
    from ghost_vllm import reference

    bundled = {"reference": reference.CALIBRATION_TEXT, "reference-valid": reference.VALIDATION_TEXT}
    return str(bundled[source]) if source in bundled else source


def check_source(source: str, flag: str = "--data") -> None:
    """A one-line :class:`CalibrationError` for a source that names nothing (neither a bundled/Hub name nor an
    existing path), before any model is loaded."""
    if source in NAMED_SOURCES or Path(resolve_source(source)).exists():
        return
    raise CalibrationError(f"{flag} {source}: no such file or directory, and not a named source "
                           f"({', '.join(NAMED_SOURCES)})")


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise CalibrationError(f"{path}: binary file (NUL bytes); give UTF-8 text, JSONL with a 'text' field, or a directory of .txt files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); convert it with 'iconv -t utf-8'") from None


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for lineno, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}:{lineno}: invalid JSON ({e.msg}); each line must be an object with a 'text' field") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise CalibrationError(f"{path}:{lineno}: no string 'text' field; each line must look like {{\"text\": \"...\"}}")
        texts.append(row["text"])
    return texts


def _load_hf(name: str) -> list[str]:
    dataset, config, split = HF_DATASETS[name]
    try:
        import datasets  # optional
    except ImportError:
        raise CalibrationError(
            f"calibration '{name}' needs the Hugging Face 'datasets' package and network access; "
            f"pip install 'ghost-vllm[hub]' (or datasets), or pass a local text file"
        ) from None
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # network, hub or cache failures all mean the same to the user
        raise CalibrationError(f"calibration '{name}': could not load {dataset}/{config} [{split}] ({type(e).__name__}); "
                               f"pass a local text file instead") from None
    return [row["text"] for row in ds]


def load_texts(source: str) -> list[str]:
    """Return the documents of ``source`` (non-empty list of strings) or raise :class:`CalibrationError`."""
    if source in HF_DATASETS and not Path(source).exists():
        texts = _load_hf(source)
    else:
        path = Path(resolve_source(source))
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".raw", ".jsonl"))
            if not files:
                raise CalibrationError(f"{path}: directory has no .txt, .raw or .jsonl files")
            texts = []
            for f in files:
                texts.extend(_read_jsonl(f) if f.suffix == ".jsonl" else [_read_utf8(f)])
        elif path.is_file():
            texts = _read_jsonl(path) if path.suffix == ".jsonl" else [_read_utf8(path)]
        else:
            raise CalibrationError(
                f"{source}: no such file or directory; give a text/JSONL file, a directory, or one of {', '.join(NAMED_SOURCES)}"
            )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CalibrationError(f"{source}: contains no text")
    return texts
