"""Fidelity on a hybrid: the bundled Nemotron-H-shaped model (6 Mamba2 + 2 attention + 2 MLP blocks, state 128,
n_groups 2; configs/hybrid-train.yaml) pruned to 50 % of its state by GHOST, magnitude and random (3 seeds),
WikiText-2 raw test perplexity against the dense model. Goal (issue 14): GHOST's increase ≤ 1/3 of random's.
Second table: GHOST vs balanced truncation (``method: balanced``, uniform rank r = (1−κ)·N; hybrids are uniform
because vLLM pads their pages), each with and without the readout refit, at κ 0.5 and 0.75.

    python benchmarks/hybrid_fidelity.py                       # resumable: finished points are not recomputed
    python benchmarks/hybrid_fidelity.py --wikitext-tokens 65536   # a quicker look

Points go to benchmarks/results/hybrid/fidelity_points.jsonl; hybrid_fidelity.json / .md are rebuilt from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from ghost_vllm import __version__
from ghost_vllm.calib import load_texts, make_windows
from ghost_vllm.checkpoint import load_model, load_tokenizer, source_hash
from ghost_vllm.sources import resolve_model_path
from ghost_vllm.evaluate import perplexity_of_text
from ghost_vllm.families import family_for_config
import ghost_vllm
from ghost_vllm.recipe import SelectionSpec

log = logging.getLogger("hybrid_fidelity")


def _key(p: dict) -> str:
    variant = p.get("variant", "paper")  # paper: uniform, no refit; default: the shipped recipe (+ the refit)
    return f"{p['method']}|{p['sparsity']}|{p['seed']}" + ("" if variant == "paper" else f"|{variant}")


def run_point(p: dict, model_dir: Path, tok, calib_texts: list[str], wiki: str, args) -> dict:
    model = load_model(model_dir, "float32")
    family = family_for_config(model.config)
    out = dict(p)
    if p["method"] != "dense":
        calib = make_windows(calib_texts, tok, args.nsamples, args.seq_len, 0, args.calibration)
        t0 = time.perf_counter()
        sel = SelectionSpec(p["method"], p["sparsity"], seed=p["seed"], allocation="uniform",
                            refit=p.get("variant") == "default")
        report = ghost_vllm.prune(model, calib, sel, batch_size=args.batch_size, progress=False).report
        out["calibration_s"] = time.perf_counter() - t0
        out["kept"] = [layer.kept for layer in report.layers]
    out["state_size"] = family.state_size(model.config)
    r = perplexity_of_text(model, tok, wiki, args.eval_seq_len, batch_size=max(1, 4096 // args.eval_seq_len),
                           max_tokens=args.wikitext_tokens or None, progress=False)
    out.update({"wt2_token_ppl": r.token_ppl, "wt2_word_ppl": r.word_ppl, "wt2_bpb": r.bits_per_byte,
                "wt2_tokens": r.tokens, "eval_seq_len": args.eval_seq_len, "version": __version__})
    return out


KAPPAS = (0.5, 0.75)  # the GHOST vs balanced-truncation table


def summarize(rows: list[dict], model_dir: Path, args) -> dict:
    dense = next(r for r in rows if r["method"] == "dense")["wt2_token_ppl"]
    by: dict[str, list[float]] = {}
    reductions = {}  # "method|refit" → {κ: ppl}
    for r in rows:
        if r["method"] in ("ghost", "balanced"):
            reductions.setdefault(f"{r['method']}|{r.get('variant') == 'default'}", {})[str(r["sparsity"])] = \
                r["wt2_token_ppl"]
    for r in rows:
        if r["method"] != "dense" and r["sparsity"] == 0.5:
            name = r["method"] + (" (default recipe: + refit)" if r.get("variant") == "default" else "")
            by.setdefault(name, []).append(r["wt2_token_ppl"])
    ppl = {m: statistics.mean(v) for m, v in by.items()}
    inc = {m: v / dense - 1 for m, v in ppl.items()}
    summary = {"model": str(model_dir), "source_sha256": source_hash(model_dir), "sparsity": 0.5,
               "wikitext_tokens": rows[0]["wt2_tokens"], "eval_seq_len": args.eval_seq_len,
               "calibration": {"source": args.calibration, "nsamples": args.nsamples, "seq_len": args.seq_len},
               "dense_ppl": dense, "ppl": ppl, "increase": inc,
               "random_seeds_ppl": by.get("random", []),
               "ghost_over_random_increase": inc["ghost"] / inc["random"] if inc.get("random") else None,
               "goal": "GHOST's increase <= 1/3 of random's", "reductions": reductions}
    summary["goal_met"] = summary["ghost_over_random_increase"] is not None and summary["ghost_over_random_increase"] <= 1 / 3
    return summary


def write(summary: dict, out: Path) -> None:
    (out / "hybrid_fidelity.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"WikiText-2 raw test, {summary['wikitext_tokens']:,} tokens, windows of {summary['eval_seq_len']}; "
             f"κ = 0.5 (state 128 → 64 in all 6 Mamba2 layers); calibration {summary['calibration']['nsamples']} × "
             f"{summary['calibration']['seq_len']} tokens of {summary['calibration']['source']}.", "",
             "| variant | token ppl | increase vs dense |", "|---|---:|---:|",
             f"| dense | {summary['dense_ppl']:.2f} | — |"]
    for m in ("ghost (default recipe: + refit)", "ghost", "magnitude", "random"):
        if m in summary["ppl"]:
            extra = " (mean of 3 seeds)" if m == "random" else ""
            lines.append(f"| {m}{extra} | {summary['ppl'][m]:.2f} | {100 * summary['increase'][m]:+.2f} % |")
    r = summary["ghost_over_random_increase"]
    lines += ["", f"GHOST's increase / random's = {r:.3f} (goal ≤ 0.333: {'met' if summary['goal_met'] else 'NOT met'})."]
    red = summary.get("reductions") or {}
    if red:
        d = summary["dense_ppl"]
        lines += ["", "GHOST (channel selection) vs balanced truncation (a projection of the state), uniform in every "
                  "Mamba2 layer, same SSM-state bytes per κ (balanced keeps every B/C channel in the conv state); "
                  f"dense {d:.2f}.", "",
                  "| variant | " + " | ".join(f"κ {k} ppl (Δ)" for k in KAPPAS) + " |",
                  "|---|" + "---:|" * len(KAPPAS)]
        for method in ("ghost", "balanced"):
            for refit in (False, True):
                ppl = red.get(f"{method}|{refit}", {})
                cells = [f"{ppl[str(k)]:.2f} ({100 * (ppl[str(k)] / d - 1):+.3f} %)" if str(k) in ppl else "—"
                         for k in KAPPAS]
                lines.append(f"| {method}{' + refit' if refit else ''} | " + " | ".join(cells) + " |")
    (out / "hybrid_fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hybrid")
    ap.add_argument("--calibration", default="reference")
    ap.add_argument("--wikitext", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--wikitext-tokens", type=int, default=0, help="first N tokens only (default 0: the whole test set)")
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--random-seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hybrid"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_dir = resolve_model_path(args.model)
    tok = load_tokenizer(model_dir)
    calib_texts = load_texts(args.calibration)
    wiki = Path(args.wikitext).read_text(encoding="utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fidelity_points.jsonl"
    done = {_key(json.loads(line)) for line in path.read_text().splitlines()} if path.exists() else set()
    points = [{"method": "dense", "sparsity": 0.0, "seed": 0}, {"method": "ghost", "sparsity": 0.5, "seed": 0},
              {"method": "magnitude", "sparsity": 0.5, "seed": 0}]
    points += [{"method": "random", "sparsity": 0.5, "seed": int(s)} for s in args.random_seeds.split(",")]
    points += [{"method": "ghost", "sparsity": 0.5, "seed": 0, "variant": "default"}]
    points += [{"method": m, "sparsity": k, "seed": 0, **v} for k in KAPPAS for m in ("ghost", "balanced")
               for v in ({}, {"variant": "default"}) if (m, k) != ("ghost", 0.5)]
    for p in [p for p in points if _key(p) not in done]:
        t0 = time.time()
        row = run_point(p, model_dir, tok, calib_texts, wiki, args)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("%s: ppl %.2f (%.0f s)", _key(p), row["wt2_token_ppl"], time.time() - t0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write(summarize(rows, model_dir, args), args.out)


if __name__ == "__main__":
    main()
