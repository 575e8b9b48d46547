"""Recall cost of state pruning on the bundled MQAR recall model: exact-match accuracy against state bytes per
sequence, for GHOST (uniform, + readout refit, per-layer adaptive), magnitude, random (seeds 0-2) and Taylor at
κ ∈ {0.25, 0.5, 0.75, 0.875}, and — on the same axis — the dense model with its SSM state stored in the narrow
formats of the frontier benchmark (simulated per token).

    python benchmarks/recall.py          # resumable → benchmarks/results/recall/{points.jsonl, recall.json, recall.md, recall.png}

Calibration: 128 MQAR training sequences of 512 tokens (64 pairs; `--calibration recall`: the training distribution,
a seed stream disjoint from evaluation). Evaluation: 256 held-out sequences per level (8, 16, 32, 48, 64 pairs),
ghost_vllm/recall/evaluate.py. multiple_of 8.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ghost_vllm import __version__  # noqa: E402
from ghost_vllm.allocation import adaptive_state_sizes  # noqa: E402
from ghost_vllm.loadtest.state_formats import FORMATS, stored_state_mixers  # noqa: E402
from ghost_vllm.checkpoint import load_model  # noqa: E402
import ghost_vllm  # noqa: E402
from ghost_vllm.recipe import SelectionSpec  # noqa: E402
from ghost_vllm.recall import MODEL_DIR  # noqa: E402
from ghost_vllm.recall.evaluate import calibration_windows, model_predictor, recall_accuracy  # noqa: E402
from ghost_vllm.selection import kept_count  # noqa: E402

log = logging.getLogger("recall")
OUT = ROOT / "benchmarks" / "results" / "recall"
KAPPAS = (0.25, 0.5, 0.75, 0.875)
# (name, method, seed, variant)
RUNS = [("ghost", "ghost", 0, "uniform"), ("ghost+refit", "ghost", 0, "refit"), ("ghost adaptive", "ghost", 0, "adaptive"),
        ("ghost adaptive+refit", "ghost", 0, "adaptive+refit"),
        ("magnitude", "magnitude", 0, "uniform"), ("taylor", "taylor", 0, "uniform"),
        ("random s0", "random", 0, "uniform"), ("random s1", "random", 1, "uniform"), ("random s2", "random", 2, "uniform"),
        ("balanced", "balanced", 0, "uniform"), ("balanced hankel", "balanced", 0, "hankel"),
        ("balanced hankel+refit", "balanced", 0, "hankel+refit")]
KAPPAS_ALL = (*KAPPAS, 0.9375)  # the balanced rows also at κ 0.9375
# (name, method, variant) run with the plugin's int8 state too
INT8_RUNS = [("ghost adaptive+refit", "ghost", "adaptive+refit"), ("balanced hankel+refit", "balanced", "hankel+refit")]


def state_bytes(cfg, sizes, fmt: str = "float32", ranks=None) -> int:
    """Conv state at N_l (float32) + SSM state at r_l (a projection) or N_l, stored in ``fmt``."""
    H, P, G, K = cfg.num_heads, cfg.head_dim, cfg.n_groups, cfg.conv_kernel
    ranks = ranks or sizes
    return sum((K - 1) * (H * P + 2 * G * n) * 4 + FORMATS[fmt].ssm_bytes(H, P, r) for n, r in zip(sizes, ranks))


def selection(method: str, kappa: float, multiple_of: int, seed: int, variant: str, sizes=None) -> SelectionSpec:
    if variant in ("adaptive+refit", "hankel", "hankel+refit"):  # allocation inside ghost_vllm.prune
        return SelectionSpec(method, kappa, multiple_of, seed, allocation=variant.split("+")[0],
                             refit=variant.endswith("+refit"))
    return SelectionSpec(method, kappa, multiple_of, seed, "uniform", state_sizes=sizes, refit=variant == "refit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--multiple-of", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    points = OUT / "points.jsonl"
    rows = [json.loads(x) for x in points.read_text().splitlines()] if points.exists() else []
    done = {(r["name"], r["sparsity"], r["format"]) for r in rows}
    dense = load_model(MODEL_DIR)
    L, N = int(dense.config.num_hidden_layers), int(dense.config.state_size)
    calib = calibration_windows(args.nsamples, args.seq_len)

    def record(row: dict) -> None:
        rows.append(row | {"version": __version__})
        with points.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        log.info("%s κ=%s %s: %d B, accuracy %.4f", row["name"], row["sparsity"], row["format"],
                 row["bytes_per_sequence"], row["accuracy"])

    for fmt in FORMATS:  # the dense model, state stored in each format
        if ("dense", 0.0, fmt) in done:
            continue
        with stored_state_mixers(dense, FORMATS[fmt]):
            r = recall_accuracy(model_predictor(dense), args.sequences)
        record({"name": "dense", "method": "dense", "sparsity": 0.0, "format": fmt, "state_sizes": [N] * L,
                "bytes_per_sequence": state_bytes(dense.config, [N] * L, fmt), **r.to_dict()})
    for kappa in KAPPAS_ALL:
        for name, method, seed, variant in RUNS:
            if (name, kappa, "float32") in done or (kappa not in KAPPAS and method != "balanced"):
                continue
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            sizes = None
            if variant == "adaptive":
                n = kept_count(N, kappa, args.multiple_of)
                sizes = adaptive_state_sizes(model, calib, 16, n, args.multiple_of, args.multiple_of,
                                             progress=False).state_sizes
            sel = selection(method, kappa, args.multiple_of, seed, variant, sizes)
            report = ghost_vllm.prune(model, calib, sel, batch_size=16, progress=False).report
            seconds = time.perf_counter() - t0
            r = recall_accuracy(model_predictor(model), args.sequences)
            record({"name": name, "method": method, "seed": seed, "variant": variant, "sparsity": kappa,
                    "format": "float32", "state_sizes": report.state_sizes, "calibration_s": seconds,
                    **({"state_ranks": report.state_ranks} if report.state_ranks else {}),
                    "bytes_per_sequence": state_bytes(model.config, report.state_sizes, ranks=report.state_ranks),
                    **r.to_dict()})
    for kappa in KAPPAS:  # with the plugin's int8 state (the serving format, simulated)
        for name, method, variant in INT8_RUNS:
            if (name, kappa, "int8") in done:
                continue
            model = copy.deepcopy(dense)
            report = ghost_vllm.prune(model, calib, selection(method, kappa, args.multiple_of, 0, variant),
                                      batch_size=16, progress=False).report
            with stored_state_mixers(model, FORMATS["int8"]):
                r = recall_accuracy(model_predictor(model), args.sequences)
            record({"name": name, "method": method, "seed": 0, "variant": variant, "sparsity": kappa,
                    "format": "int8", "state_sizes": report.state_sizes,
                    **({"state_ranks": report.state_ranks} if report.state_ranks else {}),
                    "bytes_per_sequence": state_bytes(model.config, report.state_sizes, "int8", report.state_ranks),
                    **r.to_dict()})
    write_report(rows)


def write_report(rows: list[dict]) -> None:
    dense = next(r for r in rows if r["name"] == "dense" and r["format"] == "float32")
    base = dense["accuracy"]
    kappas = sorted({r["sparsity"] for r in rows if r["sparsity"] > 0})
    names = [n for n, *_ in RUNS if not n.startswith("random")] + ["random (mean of 3 seeds)"]

    int8 = [r for r in rows if r["format"] == "int8" and r["name"] != "dense"]
    rows = [r for r in rows if r["format"] == "float32" or r["name"] == "dense"]

    def acc(name: str, k: float) -> float | None:
        if name.startswith("random"):
            xs = [r["accuracy"] for r in rows if r["method"] == "random" and r["sparsity"] == k]
            return sum(xs) / len(xs) if xs else None
        return next((r["accuracy"] for r in rows if r["name"] == name and r["sparsity"] == k), None)

    summary = {"dense_accuracy": base, "kept_share": {n: {str(k): (acc(n, k) / base if acc(n, k) is not None else None)
                                                           for k in kappas} for n in names}}
    (OUT / "recall.json").write_text(json.dumps({"summary": summary, "rows": rows + int8}, indent=1) + "\n")
    lines = [f"Bundled MQAR recall model (dense accuracy {base:.4f} on 256 held-out sequences per level, 8-64 pairs); "
             "calibration: 128 MQAR training sequences × 512 tokens. Accuracy (share of dense):", "",
             "| method | " + " | ".join(f"κ {k}" for k in kappas) + " |", "|---" * (len(kappas) + 1) + "|"]
    for n in names:
        cells = []
        for k in kappas:
            a = acc(n, k)
            cells.append("—" if a is None else f"{a:.3f} ({100 * a / base:.0f} %)")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    seeds = {k: [r["accuracy"] for r in rows if r["method"] == "random" and r["sparsity"] == k] for k in kappas}
    lines += ["", "Random, per seed: " + "; ".join(f"κ {k}: " + ", ".join(f"{a:.3f}" for a in v) for k, v in seeds.items()),
              "", "Dense model with its SSM state stored in a narrower format after every token (simulated):", "",
              "| state format | B/sequence | accuracy |", "|---|---|---|"]
    for r in rows:
        if r["name"] == "dense":
            lines.append(f"| {r['format']} | {r['bytes_per_sequence']:,} | {r['accuracy']:.4f} |")
    lines += ["", "Per difficulty at κ 0.5 (pairs: accuracy):", ""]
    for n in ("ghost", "random s0", "magnitude", "taylor"):
        r = next((r for r in rows if r["name"] == n and r["sparsity"] == 0.5), None)
        if r:
            lines.append(f"- {n}: " + ", ".join(f"{p}: {v:.3f}" for p, v in r["per_pairs"].items()))
    if int8:
        lines += ["", "With the plugin's int8 state (+ a float32 scale per head; "
                      "stored after every token, simulated — equal to the engine, benchmarks/int8_state.py):", "",
                  "| recipe | κ | B/sequence (float32 state → int8) | accuracy, float32 state | accuracy, int8 state | int8 / float32 |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(int8, key=lambda r: (r["name"] != "ghost adaptive+refit", r["sparsity"])):
            f = next(x for x in rows if x["name"] == r["name"] and x["sparsity"] == r["sparsity"])
            lines.append(f"| {r['name']} | {r['sparsity']} | {f['bytes_per_sequence']:,} → {r['bytes_per_sequence']:,} | "
                         f"{f['accuracy']:.4f} | {r['accuracy']:.4f} | {100 * r['accuracy'] / f['accuracy']:.1f} % |")
    (OUT / "recall.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, *_ in RUNS:
        pts = sorted((r["bytes_per_sequence"], r["accuracy"]) for r in rows if r["name"] == n)
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=n, alpha=0.6 if n.startswith("random") else 1)
    fm = sorted((r["bytes_per_sequence"], r["accuracy"], r["format"]) for r in rows if r["name"] == "dense")
    ax.scatter([b for b, _, _ in fm], [a for _, a, _ in fm], marker="*", s=80, color="k", zorder=5,
               label="dense, narrow state (simulated)")
    for b, a, f in fm:
        ax.annotate(f, (b, a), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("state bytes per sequence (log)")
    ax.set_ylabel("MQAR exact-match accuracy")
    ax.set_title("Recall vs state bytes (bundled recall model)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "recall.png", dpi=130)


if __name__ == "__main__":
    main()
