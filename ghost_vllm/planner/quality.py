"""Quality figures the project has measured (``benchmarks/results/``), looked up for a planned variant — never
estimated: a variant without a measurement is "not measured".

The measurements cover the two bundled models:
* ``reference`` — WikiText-2 raw test token perplexity (first 131,072 tokens, seq 512) from ``fidelity/points.jsonl``
  (uniform, every method), ``budgets/points.jsonl`` (uniform and adaptive GHOST) and ``recipes/points.jsonl``
  (uniform / adaptive GHOST with and without the refit: the default recipe);
* ``recall`` — MQAR exact-match accuracy (256 held-out sequences per level) from ``recall/points.jsonl``.
A variant matches a measurement by method (and refit) and the exact per-layer state sizes — and a checkpoint also by
its recorded calibration (ghost.json), which must be the one the measurements used (:data:`MEASURED_CALIBRATION`):
the same method and sizes calibrated on other data is another model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["Quality", "default_results_dir", "measured_quality", "MEASURED_CALIBRATION"]

# the calibration every measured point used: benchmarks/fidelity.py and budgets.py calibrate on the reference text's
# calibration half, 128 × 128 tokens, seed 0; benchmarks/recall.py on 128 MQAR training sequences × 512, seed 0
MEASURED_CALIBRATION = {"reference": {"source": "reference", "nsamples": 128, "seq_len": 128, "seed": 0},
                        "recall": {"source": "recall", "nsamples": 128, "seq_len": 512, "seed": 0}}
PPL = "WikiText-2 token ppl (seq 512, 131,072 tokens)"
RECALL = "MQAR recall accuracy (256 held-out sequences per level)"


@dataclass(frozen=True)
class Quality:
    metric: str
    dense: float
    value: float
    source: str  # results file the figure comes from

    @property
    def change(self) -> float:
        """Perplexity: % increase; accuracy: points lost (positive = worse)."""
        if self.metric == PPL:
            return 100.0 * (self.value / self.dense - 1.0)
        return 100.0 * (self.dense - self.value)

    @property
    def increase_pct(self) -> float:  # perplexity rows (kept for the JSON's readers)
        return self.change

    def text(self, dense_row: bool) -> str:
        if self.metric == PPL:
            return f"ppl {self.value:.2f}" + (" (dense)" if dense_row else f" ({self.change:+.2f} %)")
        return f"recall {self.value:.3f}" + (" (dense)" if dense_row else f" (−{self.change:.1f} pts)")

    def to_dict(self) -> dict:
        return asdict(self) | ({"increase_pct": self.change} if self.metric == PPL else {"points_lost": self.change})


def default_results_dir() -> Optional[Path]:
    """``benchmarks/results`` of the source tree this package runs from (absent from an installed wheel)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    return path if path.is_dir() else None


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


Table = dict[tuple[str, tuple[int, ...]], tuple[float, str]]


def _reference(results: Path) -> tuple[Optional[float], Table]:
    dense, table = None, {}
    for rel in ("fidelity/points.jsonl", "budgets/points.jsonl", "recipes/points.jsonl"):
        for r in _rows(results / rel):
            ppl = r.get("wt2_512_token_ppl", r.get("wt2_ppl"))
            if ppl is None or r.get("wt2_tokens", 131072) != 131072:
                continue
            method = r.get("method") or ("dense" if r.get("variant") == "dense" else "ghost")
            if "refit" in str(r.get("variant", "")):
                method += "+refit"
            if method == "dense":
                dense = dense or float(ppl)
                continue
            if method == "random" or r.get("variant") in ("score_mass", "joint_fisher"):
                continue  # seeds vary / benchmark-only ablations: not a product variant
            sizes = r.get("state_sizes") or ([r["state_size"]] * len(r["kept"]) if "kept" in r else None)
            if sizes:
                table.setdefault((method, tuple(int(n) for n in sizes)), (float(ppl), f"benchmarks/results/{rel}"))
    return dense, table


def _recall(results: Path) -> tuple[Optional[float], Table]:
    dense, table = None, {}
    for r in _rows(results / "recall" / "points.jsonl"):
        if r.get("format", "float32") != "float32":
            continue
        if r["method"] == "dense":
            dense = float(r["accuracy"])
        elif r["method"] != "random":
            key = r["method"] + ("+refit" if "refit" in str(r.get("variant", "")) else "")
            table.setdefault((key, tuple(int(n) for n in r["state_sizes"])), (float(r["accuracy"]),
                                                                              "benchmarks/results/recall/points.jsonl"))
    return dense, table


def measured_quality(origin: Optional[str], method: str, state_sizes: Sequence[int],
                     results: Optional[Path], calibration: Optional[dict] = None) -> Optional[Quality]:
    """The measured quality of this variant of a bundled model (``origin`` 'reference' or 'recall'), or None.
    ``method`` is 'dense', a pruning method, or '<method>+refit'; ``calibration`` a checkpoint's recorded calibration
    spec (None for a what-if variant, which is priced as the benchmarks calibrate)."""
    if origin is None or results is None or origin not in MEASURED_CALIBRATION:
        return None
    if calibration is not None and method != "dense" and any(
            calibration.get(k) != v for k, v in MEASURED_CALIBRATION[origin].items()):
        return None
    dense, table = (_reference if origin == "reference" else _recall)(results)
    metric = PPL if origin == "reference" else RECALL
    source = "benchmarks/results/" + ("fidelity/points.jsonl" if origin == "reference" else "recall/points.jsonl")
    if dense is None:
        return None
    if method == "dense":
        return Quality(metric, dense, dense, source)
    hit = table.get((method, tuple(int(n) for n in state_sizes)))
    return Quality(metric, dense, hit[0], hit[1]) if hit else None
