"""What the default recipe costs to calibrate against the paper's GHOST, measured as a user runs it.

    python benchmarks/recipe_cost.py      # → benchmarks/results/recipe_cost.{json,md}

`ghost-vllm prune` in its own process, one run at a time (nothing else running), on (a) the bundled reference model
(128 × 128 calibration tokens, as configs/reference-ghost50.yaml) and (b) a random checkpoint with mamba2-130m's real
shape (mamba_ssm layout, fp32, 24 layers × 24 heads, 64 × 128 calibration tokens: the cost is linear in tokens,
benchmarks/results/prune_cost.md). Variants: ``--allocation uniform --no-refit`` (the paper's GHOST) and the defaults
(per-layer allocation + refit). Recorded: wall seconds of the process and ghost.json's allocation and calibration
seconds; the ratio default / paper is the figure the issue sets (goal ≤ 3×), balanced / default the balanced
truncation issue's (goal ≤ 1.5×; balanced = ``--method balanced``: the dense Hankel pre-pass, the Gramian pass, the
refit). Repeats are interleaved (paper, default, balanced, paper, …) and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ghost_vllm.mamba.mamba_ssm_format import mamba_ssm_config, save_random_mamba_ssm_checkpoint  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
TOKENIZER = ROOT.parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b.json"
VARIANTS = {"paper (uniform, no refit)": ["--allocation", "uniform", "--no-refit"], "default (auto + refit)": [],
            "balanced (hankel + refit)": ["--method", "balanced"]}


def run(model: str, extra: list[str], nsamples: int, work: Path) -> dict:
    out = work / "out"
    cmd = [sys.executable, "-m", "ghost_vllm.cli", "prune", "--model", model, "--calibration", "reference",
           "--nsamples", str(nsamples), "--seq-len", "128", "--batch-size", "16", "--multiple-of", "8",
           "--dtype", "float32", "--device", "cpu", "--out", str(out), "--overwrite", "--no-progress", *extra]
    if model != "reference":
        cmd += ["--tokenizer", str(TOKENIZER)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    g = json.loads((out / "ghost.json").read_text())
    return {"wall_s": wall, "calibration_s": g["timings"]["calibration_s"], "allocation_s": g["timings"]["allocation_s"],
            "allocation": g["allocation"], "refit": "refit" in g, "state_sizes": g["state_sizes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "recipe-cost")
    ap.add_argument("--models", default="reference,mamba2-130m",
                    help="comma-separated subset of reference, mamba2-130m; rows of the others are kept from the "
                         "committed JSON")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    shape = args.work / "mamba2-130m-random"
    if not (shape / "config.json").is_file():
        save_random_mamba_ssm_checkpoint(shape, mamba_ssm_config("mamba2-130m"), seed=0)
    models = {"reference (6 layers, d 512)": ("reference", 128), "mamba2-130m shape (24 layers, d 768)": (str(shape), 64)}
    wanted = {"reference": "reference (6 layers, d 512)", "mamba2-130m": "mamba2-130m shape (24 layers, d 768)"}
    unknown = set(args.models.split(",")) - set(wanted)
    if unknown:
        ap.error(f"--models: unknown {', '.join(sorted(unknown))}; use reference, mamba2-130m")
    run_labels = {wanted[m] for m in args.models.split(",")}
    kept = {}
    if (OUT / "recipe_cost.json").is_file():
        kept = {r["model"]: r for r in json.loads((OUT / "recipe_cost.json").read_text())}
    rows = []
    for label, (model, nsamples) in models.items():
        if label not in run_labels:
            if label in kept:
                rows.append(kept[label])
            continue
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for v, extra in VARIANTS.items():
                runs[v].append(run(model, extra, nsamples, args.work))
                print(label, v, f"{runs[v][-1]['wall_s']:.1f} s", flush=True)
        med = {v: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "calibration_s", "allocation_s")}
               for v, rs in runs.items()}
        paper, default = med["paper (uniform, no refit)"], med["default (auto + refit)"]
        balanced = med["balanced (hankel + refit)"]

        def pruning(m: dict) -> float:
            return m["calibration_s"] + m["allocation_s"]

        rows.append({"model": label, "nsamples": nsamples, "seq_len": 128, "repeats": args.repeats, "runs": runs,
                     "median": med,
                     "ratio_wall": default["wall_s"] / paper["wall_s"],
                     "ratio_pruning": pruning(default) / pruning(paper),
                     "balanced_vs_default_pruning": pruning(balanced) / pruning(default),
                     "balanced_vs_default_wall": balanced["wall_s"] / default["wall_s"]})
    (OUT / "recipe_cost.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["`ghost-vllm prune` on this 2-core CPU, one process at a time, the median of each row's interleaved "
             "runs (`python benchmarks/recipe_cost.py`; runs per variant in the first column). Pruning s = ghost.json's "
             "allocation + calibration (scores, surgery, refit); wall s = the whole process (imports, loading, "
             "writing).", "",
             "| model | calibration tokens | paper GHOST: pruning s / wall s | default recipe: pruning s / wall s | "
             "default / paper (pruning) | default / paper (wall) | balanced: pruning s / wall s | "
             "balanced / default (pruning) | balanced / default (wall) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, d = r["median"]["paper (uniform, no refit)"], r["median"]["default (auto + refit)"]
        b = r["median"].get("balanced (hankel + refit)")
        bal = (f"{b['calibration_s'] + b['allocation_s']:.1f} / {b['wall_s']:.1f} | "
               f"{r['balanced_vs_default_pruning']:.2f}× | {r['balanced_vs_default_wall']:.2f}×") if b else "— | — | —"
        n = r.get('repeats', 2)
        lines.append(f"| {r['model']}, {n} run{'s' if n != 1 else ''} | {r['nsamples']} × {r['seq_len']} | "
                     f"{p['calibration_s'] + p.get('allocation_s', 0.0):.1f} / "
                     f"{p['wall_s']:.1f} | {d['calibration_s'] + d['allocation_s']:.1f} / {d['wall_s']:.1f} | "
                     f"{r['ratio_pruning']:.2f}× | {r['ratio_wall']:.2f}× | {bal} |")
    (OUT / "recipe_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
