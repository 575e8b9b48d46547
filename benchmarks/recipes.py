"""Which recipe to ship: uniform GHOST, per-layer budgets (adaptive), the readout refit, and both together, at equal
state bytes per row, on the reference model.

    python benchmarks/recipes.py          # resumable → benchmarks/results/recipes/{points.jsonl, recipes.json, recipes.md, recipes.png}

Every variant runs through ``ghost_vllm.prune`` (the call ``ghost-vllm prune`` makes) with a ``SelectionSpec``:
- ``uniform``: GHOST, the same N' in every layer (the paper);
- ``adaptive``: per-layer N'_l from the dense model's mask Fisher (``allocation: adaptive``);
- ``refit``: uniform + the readout refit (``refit: true``, global target);
- ``adaptive+refit``: both — the allocation from the dense model, then the sequential loop refits each pruned
  layer's ``out_proj`` on the per-layer checkpoint (one pass over the calibration data for scores and refit).
- ``balanced``: balanced truncation (``method: balanced``), uniform rank r = (1−κ)·N; ``balanced-hankel``: per-layer
  ranks from the dense model's Hankel singular values; ``balanced-adaptive``: per-layer ranks from the mask Fisher
  (GHOST's allocation, for comparison); ``balanced-hankel+refit``: with the readout refit.
Calibration: the bundled calibration half, 128 × 128 tokens, seed 0, multiple_of 8. Evaluation: WikiText-2 raw test,
first 131,072 tokens, seq 512 (the fidelity protocol), and ``reference-valid`` (held-out articles), whole, seq 512.
Cost: benchmarks/recipe_cost.py measures it alone (this run records each variant's ``ghost_vllm.prune`` seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ghost_vllm  # noqa: E402
from ghost_vllm import __version__  # noqa: E402
from ghost_vllm.calib import load_texts, make_windows  # noqa: E402
from ghost_vllm.checkpoint import load_model, load_tokenizer  # noqa: E402
from ghost_vllm.evaluate import perplexity_of_text  # noqa: E402
from ghost_vllm.recipe import SelectionSpec  # noqa: E402
from ghost_vllm.reference import VALIDATION_TEXT  # noqa: E402
from ghost_vllm.sources import resolve_model_path  # noqa: E402
from ghost_vllm.state import state_size_of  # noqa: E402

log = logging.getLogger("recipes")
OUT = ROOT / "benchmarks" / "results" / "recipes"
KAPPAS = (0.25, 0.5, 0.75, 0.875, 0.9375)
VARIANTS = {  # name → (method, allocation, refit)
    "uniform": ("ghost", "uniform", False),
    "adaptive": ("ghost", "adaptive", False),
    "refit": ("ghost", "uniform", True),
    "adaptive+refit": ("ghost", "adaptive", True),
    "balanced": ("balanced", "uniform", False),
    "balanced-hankel": ("balanced", "hankel", False),
    "balanced-adaptive": ("balanced", "adaptive", False),
    "balanced-hankel+refit": ("balanced", "hankel", True),
}
DEFAULT_VARIANT = "adaptive+refit"  # the shipped default recipe (bold in the table)
TEXTS = ("wt2", "valid")


def evaluate(model, tok, texts: dict, wikitext_tokens: int) -> dict:
    out = {}
    for key, text in texts.items():
        r = perplexity_of_text(model, tok, text, 512, batch_size=8, max_tokens=wikitext_tokens if key == "wt2" else None,
                               progress=False)
        out[f"{key}_ppl"], out[f"{key}_tokens"] = r.token_ppl, r.tokens
    return out


def run(model_dir: Path, variant: str, kappa: float, calib, tok, texts: dict, args) -> dict:
    model = load_model(model_dir)
    method, allocation, refit = VARIANTS[variant]
    sel = SelectionSpec(method, kappa, args.multiple_of, allocation=allocation, refit=refit)
    t0 = time.perf_counter()
    pruned = ghost_vllm.prune(model, calib, sel, batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - t0
    cfg = model.config.to_dict()
    ranks = pruned.state_ranks
    row = {"variant": variant, "sparsity": kappa, "state_sizes": ranks or pruned.state_sizes, "prune_s": seconds,
           "bytes_per_sequence": state_size_of(cfg, dtype="float32", state_sizes=pruned.state_sizes,
                                               state_ranks=ranks).bytes_per_sequence,
           "refit_error": [[r.error_before, r.error_after] for r in pruned.report.refit], "version": __version__}
    row.update(evaluate(model, tok, texts, args.wikitext_tokens))
    return row


def _delta(ppl: float, dense: float) -> str:
    return f"{ppl:.2f} ({100 * (ppl / dense - 1):+.2f}%)"


def write_report(rows: list[dict], out: Path) -> None:
    dense = next(r for r in rows if r["variant"] == "dense")
    pts = [r for r in rows if r["variant"] != "dense"]
    kappas = sorted({r["sparsity"] for r in pts})
    by = {(r["variant"], r["sparsity"]): r for r in pts}
    lines = [f"Reference model; WikiText-2 raw test (first {dense['wt2_tokens']:,} tokens) and reference-valid "
             f"({dense['valid_tokens']:,} tokens), token ppl at seq 512; dense {dense['wt2_ppl']:.2f} / "
             f"{dense['valid_ppl']:.2f}. Same state bytes in every row of a κ (Σ N'_l equal). Calibration cost: "
             f"benchmarks/results/recipe_cost.md (measured alone; this run's timings share the CPU).", "",
             "B/seq includes the conv state: a balanced row keeps every B/C channel in the conv state (N wide) and "
             "projects the SSM state to r_l (the last column), so its B/seq is a little above the GHOST rows' at the "
             "same Σ r_l = Σ N'_l.", "",
             "| κ | B/seq | variant | WikiText-2 ppl (Δ) | reference-valid ppl (Δ) | N'_l or r_l |",
             "|---|---|---|---|---|---|"]
    for k in kappas:
        for v in VARIANTS:
            r = by.get((v, k))
            if r is None:
                continue
            name = f"**{v}** (default)" if v == DEFAULT_VARIANT else v
            lines.append(f"| {k} | {r['bytes_per_sequence']:,} | {name} | {_delta(r['wt2_ppl'], dense['wt2_ppl'])} | "
                         f"{_delta(r['valid_ppl'], dense['valid_ppl'])} | {', '.join(map(str, r['state_sizes']))} |")
    (out / "recipes.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "recipes.json").write_text(json.dumps({"dense": dense, "rows": pts}, indent=1) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, TEXTS, ("WikiText-2", "reference-valid")):
        for v in VARIANTS:
            xs = [k for k in kappas if (v, k) in by]
            ax.plot(xs, [100 * (by[(v, k)][f"{key}_ppl"] / dense[f"{key}_ppl"] - 1) for k in xs], marker="o", label=v)
        ax.set_xlabel("κ (share of state channels removed)")
        ax.set_ylabel("perplexity increase vs dense (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "recipes.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--sparsities", default=",".join(map(str, KAPPAS)))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--multiple-of", type=int, default=8)
    ap.add_argument("--wikitext", default=str(ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"))
    ap.add_argument("--wikitext-tokens", type=int, default=131072)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    points = args.out / "points.jsonl"
    rows = [json.loads(x) for x in points.read_text().splitlines()] if points.exists() else []
    if not args.report_only:
        model_dir = resolve_model_path(args.model)
        tok = load_tokenizer(model_dir)
        texts = {"wt2": Path(args.wikitext).read_text(encoding="utf-8"),
                 "valid": VALIDATION_TEXT.read_text(encoding="utf-8")}
        calib = make_windows(load_texts("reference"), tok, args.nsamples, args.seq_len, 0, "reference")
        done = {(r["variant"], r["sparsity"]) for r in rows}

        def record(row: dict) -> None:
            rows.append(row)
            with points.open("a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("%s κ=%s: wt2 %.2f valid %.2f (%.1f s)", row["variant"], row["sparsity"], row["wt2_ppl"],
                     row["valid_ppl"], row.get("prune_s", 0.0))

        if ("dense", 0.0) not in done:
            record({"variant": "dense", "sparsity": 0.0, "version": __version__,
                    **evaluate(load_model(model_dir), tok, texts, args.wikitext_tokens)})
        for kappa in [float(k) for k in args.sparsities.split(",")]:
            for variant in args.variants.split(","):
                if (variant, kappa) not in done:
                    record(run(model_dir, variant, kappa, calib, tok, texts, args))
    write_report(rows, args.out)


if __name__ == "__main__":
    main()
