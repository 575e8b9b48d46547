"""Readout refit on the reference model: GHOST (uniform) with and without re-solving each pruned layer's out_proj.

    python benchmarks/refit.py            # κ 0.25 / 0.5 / 0.75 / 0.875, resumable → benchmarks/results/refit/

Calibration = the bundled calibration half (128 × 128 tokens, seed 0), multiple_of 8; evaluation = WikiText-2 raw
test, first 131,072 tokens, seq 512 (the fidelity protocol), plus `reference-valid` (held-out articles) and the
calibration half itself (seq 512): a refit that overfits its calibration text gains there and not on the others.
Variants:
- ``ghost``: the paper's truncation, no refit;
- ``refit_global`` (the product's ``--refit``): target = the dense network's activation after that layer (the
  block output must match it, so drift from earlier layers is corrected too); α = 1e-3;
- ``refit_local`` (ablation): target = the dense layer's output on the pruned network's inputs;
- ``refit_local_a0.1`` (ablation): the local target with a 100× stronger pull toward the dense weights (α = 0.1);
- ``refit_global_a1e-5`` (ablation): the global target with a 100× weaker pull (α = 1e-5).
Rows go to points.jsonl as they finish; refit.md / refit.json / refit.png are rebuilt from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ghost_vllm import __version__
from ghost_vllm.calib import load_texts, make_windows
from ghost_vllm.checkpoint import load_model, load_tokenizer
from ghost_vllm.sources import resolve_model_path
from ghost_vllm.evaluate import perplexity_of_text
import ghost_vllm
from ghost_vllm.recipe import SelectionSpec
from ghost_vllm.refit import RefitSpec
from ghost_vllm.reference import CALIBRATION_TEXT, VALIDATION_TEXT

log = logging.getLogger("refit")
VARIANTS = {"ghost": None, "refit_global": RefitSpec("global"), "refit_local": RefitSpec("local"),
            "refit_local_a0.1": RefitSpec("local", alpha=0.1), "refit_global_a1e-5": RefitSpec("global", alpha=1e-5)}


def evaluate(model, args) -> dict:
    out = {}
    for key, text, limit in (("wt2", args.wiki, args.wikitext_tokens), ("valid", args.valid, None),
                             ("calib", args.calib_text, None)):
        r = perplexity_of_text(model, args.tok, text, 512, batch_size=8, max_tokens=limit, progress=False)
        out[f"{key}_ppl"] = r.token_ppl
        out[f"{key}_tokens"] = r.tokens
    return out


def run_variant(model_dir: Path, variant: str, kappa: float, calib, args) -> dict:
    model = load_model(model_dir)
    t0 = time.perf_counter()
    sel = SelectionSpec("ghost", kappa, args.multiple_of, allocation="uniform", refit=VARIANTS[variant] is not None)
    report = ghost_vllm.prune(model, calib, sel, batch_size=args.batch_size, progress=False,
                              refit=VARIANTS[variant]).report
    seconds = time.perf_counter() - t0
    row = {"variant": variant, "sparsity": kappa, "state_size": report.state_size, "calibration_s": seconds,
           "refit": [r.to_dict() for r in report.refit], "version": __version__}
    row.update(evaluate(model, args))
    return row


def write_report(rows: list[dict], out: Path) -> None:
    dense = next(r for r in rows if r["variant"] == "dense")
    kappas = sorted({r["sparsity"] for r in rows if r["variant"] != "dense"})
    get = {(r["variant"], r["sparsity"]): r for r in rows}

    def inc(r: dict, key: str) -> float:
        return 100 * (r[f"{key}_ppl"] / dense[f"{key}_ppl"] - 1)

    summary = []
    for k in kappas:
        base = get.get(("ghost", k))
        if base is None:
            continue
        for v in VARIANTS:
            r = get.get((v, k))
            if r is None:
                continue
            summary.append({"variant": v, "sparsity": k, "state_size": r["state_size"],
                            **{f"{key}_increase_pct": inc(r, key) for key in ("wt2", "valid", "calib")},
                            "wt2_increase_vs_ghost": inc(r, "wt2") / inc(base, "wt2") if inc(base, "wt2") else None,
                            "cost_vs_ghost": r["calibration_s"] / base["calibration_s"]})
    (out / "refit.json").write_text(json.dumps({"dense": dense, "summary": summary}, indent=1) + "\n")
    lines = [f"Reference model, GHOST uniform (multiple_of 8), calibration 128 × 128 tokens of the bundled calibration "
             f"half. Perplexity increase over dense (WikiText-2 {dense['wt2_ppl']:.2f} on {dense['wt2_tokens']:,} "
             f"tokens, reference-valid {dense['valid_ppl']:.2f}, calibration half {dense['calib_ppl']:.2f}; seq 512).",
             "", "| κ | N' | variant | WT2 Δppl | valid Δppl | calib Δppl | WT2 Δ vs no refit | calibration time vs no refit |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['sparsity']} | {s['state_size']} | {s['variant']} | {s['wt2_increase_pct']:+.2f} % | "
                     f"{s['valid_increase_pct']:+.2f} % | {s['calib_increase_pct']:+.2f} % | "
                     f"{s['wt2_increase_vs_ghost']:.2f}× | {s['cost_vs_ghost']:.2f}× |")
    (out / "refit.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for v in VARIANTS:
            pts = [(s["sparsity"], s["wt2_increase_pct"]) for s in summary if s["variant"] == v]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=v)
        ax.set_xlabel("sparsity κ (state channels removed)")
        ax.set_ylabel("WikiText-2 perplexity increase (%)")
        ax.set_title("Readout refit on the reference model")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "refit.png", dpi=120)
    except ImportError:
        pass
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--sparsities", default="0.25,0.5,0.75,0.875")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--multiple-of", type=int, default=8)
    ap.add_argument("--wikitext", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--wikitext-tokens", type=int, default=131072)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/refit"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_path(args.model)
    args.tok = load_tokenizer(model_dir)
    calib = make_windows(load_texts("reference"), args.tok, args.nsamples, args.seq_len, 0, "reference").tokens
    args.wiki = Path(args.wikitext).read_text(encoding="utf-8")
    args.valid = VALIDATION_TEXT.read_text(encoding="utf-8")
    args.calib_text = CALIBRATION_TEXT.read_text(encoding="utf-8")
    points = args.out / "points.jsonl"
    rows = [json.loads(x) for x in points.read_text().splitlines()] if points.exists() else []
    done = {(r["variant"], r["sparsity"]) for r in rows}
    if ("dense", 0.0) not in done:
        rows.append({"variant": "dense", "sparsity": 0.0, **evaluate(load_model(model_dir), args)})
        with points.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    for kappa in (float(x) for x in args.sparsities.split(",")):
        for variant in args.variants.split(","):
            if (variant, kappa) in done:
                continue
            row = run_variant(model_dir, variant, kappa, calib, args)
            log.info("%s κ=%s: WT2 %.2f valid %.2f calib %.2f (%.1f s)", variant, kappa, row["wt2_ppl"],
                     row["valid_ppl"], row["calib_ppl"], row["calibration_s"])
            rows.append(row)
            with points.open("a") as f:
                f.write(json.dumps(row) + "\n")
    write_report(rows, args.out)


if __name__ == "__main__":
    main()
