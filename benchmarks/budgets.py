"""Per-layer state budgets at equal bytes: uniform GHOST vs adaptive allocation (and an allocator ablation).

    python benchmarks/budgets.py                                   # reference model, κ 0.5 / 0.75 / 0.875, resumable
    python benchmarks/budgets.py --timing-only --real-shape mamba2-130m --nsamples 16   # cost on a real shape

Calibration = the bundled calibration half (128 × 128 tokens, seed 0), multiple_of 8 (min 8); evaluation =
WikiText-2 raw test, first --wikitext-tokens tokens, seq_len 512 (the fidelity benchmark's protocol). Variants:
- ``uniform``: GHOST, N' = (1-κ)·N in every layer;
- ``adaptive``: the product's allocator (per-window mask Fisher → exact knapsack, ghost_vllm/allocation.py);
- ``score_mass`` (ablation): the same knapsack over a gradient-free cost — each layer's share of GHOST score
  energy removed, Σ_removed S² / Σ S², from the uniform run's sequential scores;
- ``joint_fisher`` (ablation): the removed set priced jointly, Σ_w (Σ_{n∈R} ∂NLL_w/∂m_n)², instead of the diagonal
  Σ_{n∈R} Σ_w (∂NLL_w/∂m_n)² (``joint_cost_curves`` below).
Every variant keeps exactly the uniform cut's Σ_l N'_l (hence its bytes). Rows go to points.jsonl as they finish;
budgets.md / budgets.json / budgets.png are rebuilt from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from ghost_vllm import __version__
from ghost_vllm.allocation import adaptive_state_sizes, allocate, candidate_sizes, cost_curves
from ghost_vllm.calib import load_texts, make_windows
from ghost_vllm.checkpoint import load_model, load_tokenizer
from ghost_vllm.sources import resolve_model_path
from ghost_vllm.evaluate import perplexity_of_text
import ghost_vllm
from ghost_vllm.recipe import SelectionSpec
from ghost_vllm.selection import kept_count
from ghost_vllm.state import state_size_of

log = logging.getLogger("budgets")
VARIANTS = ("uniform", "adaptive", "score_mass", "joint_fisher")


def joint_cost_curves(per_window: list[torch.Tensor], fisher: list[torch.Tensor],
                      candidates: list[int]) -> torch.Tensor:
    """Ablation. Like ``allocation.cost_curves``, but the removed set R_k (the N−k smallest-Fisher channels of every group) is priced
    jointly: Σ_w (Σ_{(g,n) ∈ R_k} ∂NLL_w/∂m_{g,n})² — the Fisher quadratic form of removing the whole set, with the
    correlations between channels that the diagonal drops. ``per_window[l] [W, G, N]``."""
    rows = []
    for g, f in zip(per_window, fisher):
        W, G, N = g.shape
        order = torch.sort(f.double(), dim=1).indices  # [G, N] ascending Fisher
        cum = torch.gather(g.double(), 2, order.expand(W, G, N)).cumsum(2)  # [W, G, N]
        cum = torch.cat([torch.zeros(W, G, 1, dtype=torch.float64), cum], dim=2)  # [W, G, N+1]
        rows.append(torch.stack([cum[:, :, N - k].sum(1).pow(2).sum() for k in candidates]))
    return torch.stack(rows)


def score_mass_sizes(scores: list[list[list[float]]], uniform_n: int, multiple_of: int) -> list[int]:
    """Ablation: cost_l(k) = share of layer l's GHOST score energy removed when it keeps its top k per group."""
    cands = candidate_sizes(len(scores[0][0]), multiple_of, multiple_of)
    shares = [s2 / s2.sum() for s2 in (torch.tensor(layer, dtype=torch.float64).pow(2) for layer in scores)]  # [G, N]
    return allocate(cost_curves(shares, cands), cands, len(scores) * uniform_n, multiple_of)


def run_variant(model_dir: Path, variant: str, kappa: float, calib: torch.Tensor, args, scores=None) -> dict:
    model = load_model(model_dir)
    N, L = int(model.config.state_size), int(model.config.num_hidden_layers)
    uniform_n = kept_count(N, kappa, args.multiple_of)
    t0 = time.perf_counter()
    sizes, alloc_s, extra = None, 0.0, {}
    if variant == "adaptive":
        a = adaptive_state_sizes(model, calib, args.batch_size, uniform_n, args.multiple_of, args.multiple_of,
                                 progress=False)
        sizes, alloc_s = a.state_sizes, a.seconds
        extra = {"predicted_cost": a.predicted_cost, "uniform_predicted_cost": a.uniform_predicted_cost()}
    elif variant == "score_mass":
        sizes = score_mass_sizes(scores, uniform_n, args.multiple_of)
    elif variant == "joint_fisher":  # ablation: removed sets priced jointly (allocation.joint_cost_curves)
        from ghost_vllm.stats.gradients import mask_gradients

        grads = mask_gradients(model, calib, args.batch_size, progress=False)
        cands = candidate_sizes(N, args.multiple_of, args.multiple_of)
        sizes = allocate(joint_cost_curves(grads.per_window, grads.fisher, cands), cands, L * uniform_n,
                         args.multiple_of)
        alloc_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sel = SelectionSpec("ghost", kappa, args.multiple_of, allocation="uniform", state_sizes=sizes, refit=False)
    report = ghost_vllm.prune(model, calib, sel, batch_size=args.batch_size, progress=False).report
    t2 = time.perf_counter()
    sizes = report.state_sizes
    cfg = {k: getattr(model.config, k) for k in ("hidden_size", "num_heads", "head_dim", "n_groups",
                                                  "num_hidden_layers", "conv_kernel")}
    row = {"variant": variant, "sparsity": kappa, "state_sizes": sizes, "uniform_state_size": uniform_n,
           "bytes_per_sequence": state_size_of(cfg, dtype="float32", state_sizes=sizes).bytes_per_sequence,
           "allocation_s": alloc_s, "calibration_s": t2 - t1, "total_s": t2 - t0, "version": __version__, **extra,
           "scores": [layer.scores for layer in report.layers] if variant == "uniform" else None}
    if not args.timing_only:
        r = perplexity_of_text(model, args.tok, args.wiki, 512, batch_size=8, max_tokens=args.wikitext_tokens,
                               progress=False)
        row.update(wt2_512_token_ppl=r.token_ppl, wt2_tokens=r.tokens)
    return row


def write_report(rows: list[dict], out: Path, dense_ppl: float) -> None:
    by = {(r["variant"], r["sparsity"]): r for r in rows}
    kappas = sorted({r["sparsity"] for r in rows})
    lines = ["Reference model, WikiText-2 raw test token ppl (seq_len 512, first "
             f"{rows[0].get('wt2_tokens', 0):,} tokens); dense {dense_ppl:.2f}. Same Σ N'_l (bytes) per row.", "",
             "| κ | uniform ppl (Δ%) | adaptive ppl (Δ%) | adaptive N'_l | cut of uniform's Δ | score-mass ablation ppl "
             "(Δ%) | score-mass N'_l | joint-Fisher ablation ppl (Δ%) | joint-Fisher N'_l | bytes/seq | adaptive time / uniform |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for k in kappas:
        u, a, s, j = (by.get((v, k)) for v in VARIANTS)
        if not (u and a and s and j):
            continue
        du, da, ds, dj = (100 * (r["wt2_512_token_ppl"] / dense_ppl - 1) for r in (u, a, s, j))
        cut = 1 - da / du if du > 0 else float("nan")
        ratio = a["total_s"] / u["total_s"]
        summary.append({"sparsity": k, "uniform_increase_pct": du, "adaptive_increase_pct": da,
                        "score_mass_increase_pct": ds, "joint_fisher_increase_pct": dj, "adaptive_cut": cut,
                        "adaptive_sizes": a["state_sizes"], "score_mass_sizes": s["state_sizes"],
                        "joint_fisher_sizes": j["state_sizes"], "bytes_per_sequence": a["bytes_per_sequence"],
                        "uniform_bytes_per_sequence": u["bytes_per_sequence"], "time_ratio": ratio})
        lines.append(f"| {k} | {u['wt2_512_token_ppl']:.2f} (+{du:.2f}%) | {a['wt2_512_token_ppl']:.2f} (+{da:.2f}%) | "
                     f"{', '.join(map(str, a['state_sizes']))} | {100 * cut:.0f} % | {s['wt2_512_token_ppl']:.2f} "
                     f"(+{ds:.2f}%) | {', '.join(map(str, s['state_sizes']))} | {j['wt2_512_token_ppl']:.2f} (+{dj:.2f}%) | "
                     f"{', '.join(map(str, j['state_sizes']))} | {a['bytes_per_sequence']:,} | "
                     f"{ratio:.2f}× |")
    (out / "budgets.md").write_text("\n".join(lines) + "\n")
    (out / "budgets.json").write_text(json.dumps({"dense_ppl": dense_ppl, "summary": summary}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (("uniform_increase_pct", "uniform GHOST"), ("adaptive_increase_pct", "adaptive (Fisher)"),
                       ("score_mass_increase_pct", "ablation: score mass"),
                       ("joint_fisher_increase_pct", "ablation: joint Fisher")):
        ax.plot([s["sparsity"] for s in summary], [s[key] for s in summary], marker="o", label=label)
    ax.set_xlabel("κ (fraction of state removed; same bytes per column)")
    ax.set_ylabel("WikiText-2 ppl increase over dense (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "budgets.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--real-shape", default=None, help="time a random-weight real shape instead (e.g. mamba2-130m)")
    ap.add_argument("--sparsities", default="0.5,0.75,0.875")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--multiple-of", type=int, default=8)
    ap.add_argument("--wikitext", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--wikitext-tokens", type=int, default=131072)
    ap.add_argument("--timing-only", action="store_true", help="no evaluation (cost measurement)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/budgets"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.real_shape:
        from ghost_vllm.mamba.mamba_ssm_format import mamba_ssm_config, save_random_mamba_ssm_checkpoint
        from ghost_vllm.mamba.mamba_ssm_format import convert_mamba_ssm_dir

        work = Path("build/budgets") / args.real_shape
        if not (work / "hf" / "model.safetensors").exists():
            save_random_mamba_ssm_checkpoint(work / "ssm", mamba_ssm_config(args.real_shape), seed=0, fmt="bin")
            convert_mamba_ssm_dir(work / "ssm", work / "hf",
                                  tokenizer="../shared/data/tokenizers/gpt-neox-20b.json")
        model_dir = work / "hf"
        points = args.out / f"timing-{args.real_shape}.jsonl"
    else:
        model_dir = resolve_model_path(args.model)
        points = args.out / ("timing.jsonl" if args.timing_only else "points.jsonl")
    args.tok = load_tokenizer(model_dir)
    calib = make_windows(load_texts("reference"), args.tok, args.nsamples, args.seq_len, 0, "reference").tokens
    args.wiki = Path(args.wikitext).read_text(encoding="utf-8")
    rows = [json.loads(x) for x in points.read_text().splitlines()] if points.exists() else []
    done = {(r["variant"], r["sparsity"]) for r in rows}
    if not args.timing_only and ("dense", 0.0) not in done:
        r = perplexity_of_text(load_model(model_dir), args.tok, args.wiki, 512, batch_size=8,
                               max_tokens=args.wikitext_tokens, progress=False)
        rows.append({"variant": "dense", "sparsity": 0.0, "wt2_512_token_ppl": r.token_ppl, "wt2_tokens": r.tokens})
        with points.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    for kappa in (float(x) for x in args.sparsities.split(",")):
        for variant in VARIANTS:
            if (variant, kappa) in done:
                continue
            scores = next((r["scores"] for r in rows if r["variant"] == "uniform" and r["sparsity"] == kappa), None)
            if variant == "score_mass" and scores is None:
                continue
            row = run_variant(model_dir, variant, kappa, calib, args, scores)
            log.info("%s κ=%s: %s %s", variant, kappa, row["state_sizes"], row.get("wt2_512_token_ppl", ""))
            rows.append(row)
            with points.open("a") as f:
                f.write(json.dumps(row) + "\n")
    if args.timing_only:
        timing = [{k: r[k] for k in ("variant", "sparsity", "state_sizes", "allocation_s", "calibration_s", "total_s")}
                  for r in rows]
        (points.with_suffix(".json")).write_text(json.dumps(timing, indent=1) + "\n")
        return
    dense = next(r["wt2_512_token_ppl"] for r in rows if r["variant"] == "dense")
    write_report([r for r in rows if r["variant"] != "dense"], args.out, dense)


if __name__ == "__main__":
    main()
