"""Data preparation for the reference model: Wikipedia extracts → WikiText layout → train/held-out split → BPE.

    python -m ghost_vllm.reference.prepare --config configs/reference-train.yaml

Writes ``<work_dir>/train.txt``, ``<work_dir>/heldout.txt`` and the tokenizer directory; the held-out articles are
also split in two halves shipped in the package: ``data/calibration.txt`` (the default calibration text) and
``data/validation.txt`` (evaluation only).
WikiText-2 test is never read here.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from pathlib import Path

from ghost_vllm.reference.tokenizer import train_bpe
from ghost_vllm.reference.train_config import TrainConfig, load_train_config
from ghost_vllm.reference.wikitext import article_to_wikitext

__all__ = ["split_articles", "train_tokenizer", "prepare"]

log = logging.getLogger(__name__)


def split_articles(articles: dict[str, dict], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split article titles into (train, held-out), seeded, by title so no article straddles the two."""
    titles = sorted(articles)
    rng = random.Random(seed)
    rng.shuffle(titles)
    n_held = max(1, round(heldout_fraction * len(titles)))
    return sorted(titles[n_held:]), sorted(titles[:n_held])


def _render(articles: dict[str, dict], titles: list[str], seed: int) -> str:
    order = list(titles)
    random.Random(seed).shuffle(order)  # mix topics; the JSON is sorted alphabetically
    return " \n" + "".join(article_to_wikitext(t, articles[t]["extract"]) for t in order)


def split_heldout(text: str) -> tuple[str, str]:
    """Held-out WikiText-layout text → (calibration, validation) halves, alternating whole articles."""
    blocks = re.split(r"(?m)^(?= = [^=].* = $)", text)
    articles = [b for b in blocks if b.startswith(" = ")]
    calib = " \n" + "".join(articles[0::2])
    valid = " \n" + "".join(articles[1::2])
    return calib, valid


def train_tokenizer(train_file: Path, vocab_size: int, out_dir: Path) -> None:
    """Byte-level BPE on the training split, saved in Hugging Face format (``AutoTokenizer`` loads it offline)."""
    with train_file.open(encoding="utf-8") as f:
        train_bpe(f, vocab_size).save_pretrained(str(out_dir))


def prepare(cfg: TrainConfig) -> None:
    articles = json.loads(Path(cfg.source).read_text(encoding="utf-8"))
    train_titles, held_titles = split_articles(articles, cfg.heldout_fraction, cfg.seed)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.txt").write_text(_render(articles, train_titles, cfg.seed), encoding="utf-8")
    (work / "heldout.txt").write_text(_render(articles, held_titles, cfg.seed), encoding="utf-8")
    (work / "split.json").write_text(json.dumps({"seed": cfg.seed, "heldout": held_titles}, indent=1))
    log.info("articles: %d train, %d held out", len(train_titles), len(held_titles))
    train_tokenizer(work / "train.txt", cfg.vocab_size, work / "tokenizer")
    shipped = Path(__file__).resolve().parent / "data"
    shipped.mkdir(exist_ok=True)
    calib, valid = split_heldout((work / "heldout.txt").read_text(encoding="utf-8"))
    (shipped / "calibration.txt").write_text(calib, encoding="utf-8")
    (shipped / "validation.txt").write_text(valid, encoding="utf-8")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/reference-train.yaml")
    prepare(load_train_config(Path(ap.parse_args().config)))


if __name__ == "__main__":
    main()
