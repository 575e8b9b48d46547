"""Quality figures the project has measured (``benchmarks/results/``), looked up for a planned variant — never
estimated: a variant without a measurement is "not measured".

Today the measurements cover the bundled reference model: WikiText-2 raw test token perplexity (first 131,072
tokens, seq 512) from ``fidelity/points.jsonl`` (uniform, every method) and ``budgets/points.jsonl`` (uniform and
adaptive GHOST). A variant matches a measurement by method and the exact per-layer state sizes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["Quality", "default_results_dir", "measured_quality"]

METRIC = "WikiText-2 token ppl (seq 512, 131,072 tokens)"


@dataclass(frozen=True)
class Quality:
    metric: str
    dense: float
    value: float
    source: str  # results file the figure comes from

    @property
    def increase_pct(self) -> float:
        return 100.0 * (self.value / self.dense - 1.0)

    def to_dict(self) -> dict:
        return asdict(self) | {"increase_pct": self.increase_pct}


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


def _measurements(results: Path) -> tuple[Optional[float], dict[tuple[str, tuple[int, ...]], tuple[float, str]]]:
    dense, table = None, {}
    for rel in ("fidelity/points.jsonl", "budgets/points.jsonl"):
        for r in _rows(results / rel):
            ppl = r.get("wt2_512_token_ppl")
            if ppl is None:
                continue
            method = r.get("method") or ("dense" if r.get("variant") == "dense" else "ghost")
            if method == "dense":
                dense = dense or float(ppl)
                continue
            if method == "random" or r.get("variant") in ("score_mass", "joint_fisher"):
                continue  # seeds vary / benchmark-only ablations: not a product variant
            sizes = r.get("state_sizes") or ([r["state_size"]] * len(r["kept"]) if "kept" in r else None)
            if sizes:
                table.setdefault((method, tuple(int(n) for n in sizes)), (float(ppl), f"benchmarks/results/{rel}"))
    return dense, table


def measured_quality(from_reference: bool, method: str, state_sizes: Sequence[int],
                     results: Optional[Path]) -> Optional[Quality]:
    """The measured perplexity of this variant of the reference model, or None."""
    if not from_reference or results is None:
        return None
    dense, table = _measurements(results)
    if dense is None:
        return None
    if method == "dense":
        return Quality(METRIC, dense, dense, "benchmarks/results/fidelity/points.jsonl")
    hit = table.get((method, tuple(int(n) for n in state_sizes)))
    return Quality(METRIC, dense, hit[0], hit[1]) if hit else None
