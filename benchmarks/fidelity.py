"""Fidelity sweep: the paper's comparison on the bundled reference model (or any Mamba2 directory).

    python benchmarks/fidelity.py                        # full sweep, resumable: finished points are not recomputed
    python benchmarks/fidelity.py --methods ghost,random --sparsities 0.5 --wikitext-tokens 8192 --out /tmp/f

Methods {ghost, ghost_unpaired, magnitude, random (3 seeds), taylor} × sparsity {10, 30, 50, 70, 90 %}, plus the
dense model. Each point: calibration wall time and peak RSS growth, WikiText-2 raw test token/word ppl and bits per
byte at seq_len 512 and 2048 (on the first --wikitext-tokens tokens; default: all), LAMBADA last-word accuracy on the
first --lambada-limit examples. Rows go to points.jsonl as they finish; fidelity.csv / fidelity.md and the plots are
rebuilt from it. ``--sensitivity`` runs GHOST at 50 % over nsamples × seq_len on the training split instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import threading
import time
from pathlib import Path

import torch

from ghost_vllm import __version__
from ghost_vllm.calib import load_texts, make_windows
from ghost_vllm.checkpoint import load_model, load_tokenizer
from ghost_vllm.sources import resolve_model_path
from ghost_vllm.evaluate import lambada_accuracy, perplexity_of_text
import ghost_vllm
from ghost_vllm.recipe import SelectionSpec

log = logging.getLogger("fidelity")

PAPER = {  # WikiText-2 ppl at 50 % (DESIGN §2)
    "mamba2-130m": {"dense": 25.85, "ghost": 29.06, "taylor": 1e16, "random": 45.60, "magnitude": 910.0},
    "mamba2-1.3b": {"dense": 13.17, "ghost": 14.23, "taylor": 13.94, "random": 17.77, "magnitude": 29.34},
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples this process's RSS every 20 ms while active; ``peak_growth`` is the peak over the starting RSS."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        self.peak_growth = self.peak - self.start


def point_key(p: dict) -> str:
    return f"{p['method']}|{p['sparsity']}|{p['seed']}|{p['nsamples']}|{p['seq_len']}"


def evaluate(model, tok, wiki: str, args) -> dict:
    row = {}
    for L in args.eval_seq_lens:
        r = perplexity_of_text(model, tok, wiki, L, batch_size=max(1, 4096 // L), max_tokens=args.wikitext_tokens,
                               progress=False)
        row[f"wt2_{L}_token_ppl"], row[f"wt2_{L}_word_ppl"], row[f"wt2_{L}_bpb"] = r.token_ppl, r.word_ppl, r.bits_per_byte
        row["wt2_tokens"] = r.tokens
    if args.lambada:
        lr = lambada_accuracy(model, tok, args.lambada, limit=args.lambada_limit, progress=False)
        row["lambada_acc"], row["lambada_n"] = lr.accuracy, lr.examples
    return row


def run_point(p: dict, model_dir: Path, tok, calib_texts: list[str], wiki: str, args) -> dict:
    model = load_model(model_dir)
    out = dict(p)
    if p["method"] != "dense":
        calib = make_windows(calib_texts, tok, p["nsamples"], p["seq_len"], 0, args.calibration)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            sel = SelectionSpec(p["method"], p["sparsity"], seed=p["seed"], allocation="uniform", refit=False)
            report = ghost_vllm.prune(model, calib, sel, batch_size=args.batch_size, progress=False).report
            out["calibration_s"] = time.perf_counter() - t0
        out["peak_rss_growth_bytes"] = mem.peak_growth
        out["state_size"] = report.state_size
        out["scores"] = [layer.scores for layer in report.layers]
        out["kept"] = [layer.kept for layer in report.layers]
    else:
        out["state_size"] = model.config.state_size
    out.update(evaluate(model, tok, wiki, args))
    out["version"] = __version__
    return out


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_tables(rows: list[dict], out: Path, seq_lens: list[int]) -> None:
    cols = ["method", "sparsity", "seed", "nsamples", "seq_len", "state_size", "calibration_s", "peak_rss_growth_bytes"]
    for L in seq_lens:
        cols += [f"wt2_{L}_token_ppl", f"wt2_{L}_word_ppl", f"wt2_{L}_bpb"]
    cols += ["lambada_acc", "lambada_n", "wt2_tokens"]
    with (out / "fidelity.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    L = seq_lens[0]
    key = f"wt2_{L}_token_ppl"
    dense = next((r for r in rows if r["method"] == "dense"), None)
    methods = ["ghost", "ghost_unpaired", "taylor", "random", "magnitude"]
    sparsities = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})

    def cell(method, s, k=key):
        vals = [r[k] for r in rows if r["method"] == method and r["sparsity"] == s and k in r]
        if not vals:
            return None
        return statistics.mean(vals)

    lines = [f"WikiText-2 raw test token perplexity, seq_len {L} (first {rows[0].get('wt2_tokens', '?'):,} tokens); "
             f"random = mean of its seeds. Dense: {dense[key]:.2f}." if dense else "", "",
             "| sparsity | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in sparsities:
        lines.append(f"| {round(100 * s)} % | " + " | ".join(
            "-" if cell(m, s) is None else f"{cell(m, s):.2f}" for m in methods) + " |")
    if dense and 0.5 in sparsities:
        g = cell("ghost", 0.5)
        if g is not None:
            lines += ["", f"GHOST at 50 %: {g:.2f} vs dense {dense[key]:.2f} = +{100 * (g / dense[key] - 1):.1f} % "
                      f"(paper: +12.4 % on mamba2-130m, +8.1 % on mamba2-1.3b)."]
    lines += ["", "| method | sparsity | seed | N' | WT2 ppl 512 | WT2 ppl 2048 | word ppl 512 | bits/byte 512 | "
              "LAMBADA acc | calib s | peak RSS growth MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"] != "dense", r["method"], r["sparsity"], r["seed"])):
        lines.append(
            f"| {r['method']} | {r['sparsity']} | {r['seed']} | {r['state_size']} | "
            f"{r.get(f'wt2_{seq_lens[0]}_token_ppl', float('nan')):.2f} | "
            f"{r.get(f'wt2_{seq_lens[-1]}_token_ppl', float('nan')):.2f} | {r.get(f'wt2_{L}_word_ppl', float('nan')):.1f} | "
            f"{r.get(f'wt2_{L}_bpb', float('nan')):.4f} | {r.get('lambada_acc', float('nan')):.4f} | "
            f"{r.get('calibration_s', 0):.1f} | {r.get('peak_rss_growth_bytes', 0) / 2**20:.1f} |")
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra * ra).sum() * (rb * rb).sum())))


def plots(rows: list[dict], out: Path, seq_len: int, model_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"wt2_{seq_len}_token_ppl"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for m in ["ghost", "ghost_unpaired", "taylor", "random", "magnitude"]:
        pts = sorted({r["sparsity"] for r in rows if r["method"] == m})
        ys = [statistics.mean(r[key] for r in rows if r["method"] == m and r["sparsity"] == s) for s in pts]
        if pts:
            ax.plot([100 * s for s in pts], ys, marker="o", label=m)
    if dense:
        ax.axhline(dense[key], color="k", ls="--", lw=1, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("state channels removed (%)")
    ax.set_ylabel(f"WikiText-2 token ppl (seq_len {seq_len}, log)")
    ax.set_title("reference Mamba2: perplexity vs state sparsity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ppl_vs_sparsity.png", dpi=120)
    plt.close(fig)

    # phantom states: static weight score (magnitude) vs GHOST runtime score, per channel, at 50 %
    ghost = next((r for r in rows if r["method"] == "ghost" and r["sparsity"] == 0.5), None)
    mag = next((r for r in rows if r["method"] == "magnitude" and r["sparsity"] == 0.5), None)
    if not ghost or not mag:
        return {}
    xs, ys, rhos, disagree, total = [], [], [], 0, 0
    for layer, (gs, ms) in enumerate(zip(ghost["scores"], mag["scores"])):
        g = [v for row in gs for v in row]
        m = [v for row in ms for v in row]
        xs += m
        ys += g
        rhos.append(spearman(m, g))
        kg = {(gi, n) for gi, row in enumerate(ghost["kept"][layer]) for n in row}
        km = {(gi, n) for gi, row in enumerate(mag["kept"][layer]) for n in row}
        disagree += len(kg - km) * 2  # channels kept by one ranking and removed by the other
        total += len(g)
    rho_all = spearman(xs, ys)
    share = disagree / total
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xs, ys, s=6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("static weight score ‖W_B row‖·‖W_C row‖")
    ax.set_ylabel("GHOST runtime score S")
    ax.set_title(f"phantom states: Spearman ρ = {rho_all:.2f}; rankings disagree on {100 * share:.0f} % at 50 %")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "phantom_states.png", dpi=120)
    plt.close(fig)
    stats = {"spearman_all_layers": rho_all, "spearman_per_layer": rhos, "disagreement_share_at_50": share}
    (out / "phantom_states.json").write_text(json.dumps(stats, indent=1))
    return stats


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--calibration", default="reference")
    ap.add_argument("--wikitext", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--wikitext-tokens", type=int, default=None, help="evaluate the first N tokens only")
    ap.add_argument("--eval-seq-lens", default="512,2048")
    ap.add_argument("--lambada", default="../shared/data/lambada/lambada_openai_test.jsonl")
    ap.add_argument("--lambada-limit", type=int, default=500)
    ap.add_argument("--methods", default="ghost,ghost_unpaired,magnitude,random,taylor")
    ap.add_argument("--sparsities", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--random-seeds", default="0,1,2")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sensitivity", action="store_true",
                    help="GHOST at 50 %% over nsamples {16,32,128,512} × seq_len {64,128,512} on --calibration")
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity"))
    args = ap.parse_args()
    args.eval_seq_lens = [int(x) for x in args.eval_seq_lens.split(",")]
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    model_dir = resolve_model_path(args.model)
    tok = load_tokenizer(model_dir)
    calib_texts = load_texts(args.calibration)
    wiki = Path(args.wikitext).read_text(encoding="utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    points_path = args.out / ("sensitivity.jsonl" if args.sensitivity else "points.jsonl")
    done = {point_key(r) for r in load_rows(points_path)}

    points = []
    if args.sensitivity:
        points = [{"method": "ghost", "sparsity": 0.5, "seed": 0, "nsamples": n, "seq_len": L}
                  for L in (64, 128, 512) for n in (16, 32, 128, 512)]
    else:
        if not args.no_dense:
            points.append({"method": "dense", "sparsity": 0.0, "seed": 0, "nsamples": 0, "seq_len": 0})
        for s in [float(x) for x in args.sparsities.split(",")]:
            for m in args.methods.split(","):
                seeds = [int(x) for x in args.random_seeds.split(",")] if m == "random" else [0]
                points += [{"method": m, "sparsity": s, "seed": seed, "nsamples": args.nsamples,
                            "seq_len": args.seq_len} for seed in seeds]
    todo = [p for p in points if point_key(p) not in done]
    log.info("%d points, %d already done, %d to run → %s", len(points), len(points) - len(todo), len(todo), points_path)
    for i, p in enumerate(todo, 1):
        t0 = time.time()
        try:
            row = run_point(p, model_dir, tok, calib_texts, wiki, args)
        except Exception as e:  # e.g. not enough calibration text for a sensitivity point: record and go on
            row = {**p, "error": f"{type(e).__name__}: {e}"}
        with points_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("[%d/%d] %s done in %.0f s: %s", i, len(todo), point_key(p), time.time() - t0,
                 {k: round(v, 3) for k, v in row.items() if k.startswith("wt2_") and k.endswith("token_ppl")})
    rows = [r for r in load_rows(points_path) if "error" not in r]
    if not args.sensitivity:  # the main sweep: dense + the points at this calibration size
        rows = [r for r in rows if r["method"] == "dense" or (r["nsamples"], r["seq_len"]) == (args.nsamples, args.seq_len)]
    if not args.sensitivity and rows:
        write_tables(rows, args.out, args.eval_seq_lens)
        stats = plots(rows, args.out, args.eval_seq_lens[0], model_dir)
        print((args.out / "fidelity.md").read_text())
        if stats:
            print(f"phantom states: Spearman {stats['spearman_all_layers']:.3f}, disagreement at 50 %: "
                  f"{100 * stats['disagreement_share_at_50']:.1f} %")
    elif rows:
        write_sensitivity(rows, args.out, args.eval_seq_lens, args.calibration)


def write_sensitivity(rows: list[dict], out: Path, seq_lens: list[int], source: str = "reference") -> None:
    lines = [f"GHOST at 50 %, calibration nsamples × seq_len drawn from `{source}`; WikiText-2 token ppl at each "
             f"eval seq_len.", "",
             "| nsamples | calib seq_len | calib tokens | " + " | ".join(f"WT2 ppl {L}" for L in seq_lens) + " | calib s |",
             "|---|---|---|" + "---|" * len(seq_lens) + "---|"]
    for r in sorted(rows, key=lambda r: (r["seq_len"], r["nsamples"])):
        lines.append(f"| {r['nsamples']} | {r['seq_len']} | {r['nsamples'] * r['seq_len']:,} | " + " | ".join(
            f"{r[f'wt2_{L}_token_ppl']:.2f}" for L in seq_lens) + f" | {r['calibration_s']:.1f} |")
    (out / "sensitivity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
