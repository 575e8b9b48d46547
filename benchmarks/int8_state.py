"""The int8 SSM-state cache (issue 25) on the reference model, in simulation and in the real vLLM engine (CPU):

    python benchmarks/int8_state.py            # every stage, resumable → benchmarks/results/int8_state/
    python benchmarks/int8_state.py --stage formats|engine|recall|capacity|report

* **formats** (simulation: the reference scan stores the state in the format after every token, as a decode-time
  cache does; WikiText-2 raw test, first 16,384 tokens, seq 512): dense and the default recipe's adaptive-50 %
  checkpoint × float32 / int8 per-head scale (served) / int8 per-(head, head_dim) row scale / int8 per-head with
  stochastic rounding — is a finer scale, or stochastic rounding, needed?
* **engine** (vLLM, in-process, 256 MiB of state memory, fp32 weights): blocks of dense fp32 / dense int8 / adaptive
  fp32 / adaptive int8 and ``ghost-vllm plan``'s prediction of each; perplexity *through the engine* on the same
  16,384 tokens (prompt log-probabilities with one token per engine step, so every token's state is stored in the
  cache and read back, as a decode step does) against the simulated figure; greedy agreement with the float32-state
  engine (16 prompts × 32 tokens).
* **recall** (the bundled MQAR model, dense and adaptive-50 % calibrated on MQAR): accuracy through the engine (the
  argmax of each query position's prompt log-probabilities, one token per step) at float32 and int8 state.
* **capacity**: ``ghost-vllm bench capacity`` — dense fp32 vs adaptive-50 % + int8 in the same 32 MiB, one
  closed-loop level above the dense slots: peak running sequences and saturated throughput.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "int8_state"
WORK = ROOT / "build" / "int8_state"
MEMORY = 256 * 2**20
CAPACITY_MEMORY = 32 * 2**20
TOKENS, SEQ = 16_384, 512
FORMAT_ROWS = ("float32", "int8", "int8_row", "int8_sr")
INT8 = {"ghost_state_dtype": "int8"}
FP32 = {"ghost_state_dtype": None}
DENSE_INT8 = {"architectures": ["GhostMamba2ForCausalLM"], **INT8}
log = logging.getLogger("int8_state")


def checkpoints() -> dict[str, Path]:
    """The default recipe (adaptive + refit, κ 0.5) on the reference and recall models, asking for an int8 state."""
    from ghost_vllm.cli import main as cli

    made = {"reference": WORK / "reference-adaptive50-int8", "recall": WORK / "recall-adaptive50-int8"}
    flags = {"reference": ["configs/reference-ghost50.yaml"],
             "recall": ["--model", "recall", "--calibration", "recall", "--nsamples", "128", "--seq-len", "512",
                        "--sparsity", "0.5", "--multiple-of", "8"]}
    for name, out in made.items():
        if not (out / "ghost.json").is_file():
            assert cli(["prune", *flags[name], "--state-dtype", "int8", "--out", str(out), "--overwrite",
                        "--no-progress"]) == 0
    return made


def windows(model_dir: Path) -> list[list[int]]:
    from ghost_vllm.checkpoint import load_tokenizer

    tok = load_tokenizer(model_dir)
    ids = tok(Path(WIKITEXT).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:TOKENS]
    return [[tok.eos_token_id] + ids[i:i + SEQ] for i in range(0, TOKENS, SEQ)]


WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


# -- formats (simulation) --------------------------------------------------------------------------------------

def stage_formats(ckpt: Path) -> list[dict]:
    import torch

    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.loadtest.state_formats import FORMATS, INT8_VARIANTS, stored_state_mixers
    from ghost_vllm.reference import MODEL_DIR

    path = OUT / "formats.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    done = {(r["model"], r["format"]) for r in rows}
    wins = windows(ckpt)
    for name, model_dir in (("dense", MODEL_DIR), ("adaptive-50%", ckpt)):
        model = None
        for fmt_name in FORMAT_ROWS:
            if (name, fmt_name) in done:
                continue
            model = model or load_model(model_dir)
            fmt = FORMATS.get(fmt_name) or INT8_VARIANTS[fmt_name]
            t0 = time.perf_counter()
            nll = 0.0
            with torch.no_grad(), stored_state_mixers(model, fmt):
                for i in range(0, len(wins), 8):
                    x = torch.tensor(wins[i:i + 8])
                    logits = model(x, use_cache=False).logits.float()
                    nll += float(torch.nn.functional.cross_entropy(
                        logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
            cfg = model.config
            sizes = [int(getattr(m.mixer, "ssm_state_size")) for m in model.backbone.layers]
            conv = sum((cfg.conv_kernel - 1) * (cfg.num_heads * cfg.head_dim + 2 * cfg.n_groups * n) * 4 for n in sizes)
            row = {"model": name, "format": fmt_name, "state_sizes": sizes, "tokens": TOKENS, "nll": nll,
                   "ppl": math.exp(nll / TOKENS), "eval_s": time.perf_counter() - t0,
                   "bytes_per_sequence": conv + sum(fmt.ssm_bytes(cfg.num_heads, cfg.head_dim, n) for n in sizes)}
            log.info("%s %s: ppl %.3f, %d B (%.0f s)", name, fmt_name, row["ppl"], row["bytes_per_sequence"], row["eval_s"])
            rows.append(row)
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


# -- engine worker (runs in its own process: `--worker SPEC OUT`) -----------------------------------------------

def worker(spec_path: Path, out_path: Path) -> None:
    import gc

    from vllm import LLM, SamplingParams

    results = []
    for job in json.loads(spec_path.read_text())["jobs"]:
        r: dict = {"name": job["name"]}
        kw = {"hf_overrides": job["hf_overrides"]} if job.get("hf_overrides") else {}
        if job.get("one_token_steps"):
            kw.update(long_prefill_token_threshold=1, enable_chunked_prefill=True)
        llm = LLM(model=job["model"], dtype="float32", kv_cache_memory_bytes=job["memory"], enforce_eager=True,
                  enable_prefix_caching=False, seed=0, max_model_len=job.get("max_model_len", 1024),
                  max_num_seqs=job.get("max_num_seqs", 256), **kw)
        r["num_gpu_blocks"] = int(llm.llm_engine.vllm_config.cache_config.num_gpu_blocks)
        if job.get("prompts"):
            params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
            outs = llm.generate([{"prompt_token_ids": p} for p in job["prompts"]], params, use_tqdm=False)
            r["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        if job.get("score"):
            t0 = time.perf_counter()
            outs = llm.generate([{"prompt_token_ids": p} for p in job["score"]],
                                SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
            r["nll"] = sum(-lp[t].logprob for o, p in zip(outs, job["score"]) for lp, t in zip(o.prompt_logprobs[1:], p[1:]))
            r["score_s"] = time.perf_counter() - t0
        if job.get("recall"):
            r["recall"] = engine_recall(llm, job["recall_sequences"])
        results.append(r)
        del llm
        gc.collect()
    out_path.write_text(json.dumps({"results": results}))


def engine_recall(llm, sequences: int) -> dict:
    """MQAR accuracy with the engine as the predictor: argmax at position t = the top-1 token of prompt position t+1."""
    import torch
    from vllm import SamplingParams

    from ghost_vllm.recall.evaluate import recall_accuracy

    def predict(tokens: torch.Tensor) -> torch.Tensor:
        prompts = [{"prompt_token_ids": row} for row in tokens.tolist()]
        outs = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
        pred = torch.full_like(tokens, -1)
        for b, o in enumerate(outs):
            for t, lp in enumerate(o.prompt_logprobs[1:]):
                pred[b, t] = next(tok for tok, v in lp.items() if v.rank == 1)
        return pred

    return recall_accuracy(predict, sequences).to_dict()


def run_worker(jobs: list[dict]) -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"jobs": jobs}))
        # in-process engine: all requests are queued before the first step (vLLM lifts long_prefill_token_threshold
        # for a request scheduled alone), so every prompt token of every window takes its own step
        subprocess.run([sys.executable, __file__, "--worker", str(spec), str(out)], check=True,
                       env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        return json.loads(out.read_text())["results"]


def plan_blocks(model: Path, memory: int, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "plan", str(model), "--cache-memory", str(memory),
                          "--dtype", "float32", "--json", *extra], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


# -- engine ----------------------------------------------------------------------------------------------------

def stage_engine(ckpt: Path) -> dict:
    from ghost_vllm.checkpoint import load_tokenizer
    from ghost_vllm.reference import MODEL_DIR, VALIDATION_TEXT

    tok = load_tokenizer(ckpt)
    ids = tok(Path(VALIDATION_TEXT).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    prompts = [ids[i * 997: i * 997 + 48] for i in range(16)]
    wins = windows(ckpt)
    configs = [("dense", "float32", MODEL_DIR, None, ()), ("dense", "int8", MODEL_DIR, DENSE_INT8, ("--state-dtype", "int8")),
               ("adaptive-50%", "float32", ckpt, FP32, ("--mamba-ssm-cache-dtype", "float32")),
               ("adaptive-50%", "int8", ckpt, None, ())]
    jobs = [{"name": f"{m} {dt}", "model": str(path), "memory": MEMORY, "hf_overrides": ov, "prompts": prompts,
             "max_tokens": 32, "score": wins, "one_token_steps": True} for m, dt, path, ov, _ in configs]
    results = run_worker(jobs)
    rows = []
    for (m, dt, path, _, extra), r in zip(configs, results):
        plan = plan_blocks(path, MEMORY, *extra)
        rows.append({"model": m, "state": dt, "num_gpu_blocks": r["num_gpu_blocks"], "planned_blocks": plan["num_blocks"],
                     "bytes_per_sequence": plan["bytes_per_sequence"], "ppl": math.exp(r["nll"] / TOKENS),
                     "nll": r["nll"], "score_s": r["score_s"], "tokens": r["tokens"]})
    for row in rows:
        base = next(x for x in rows if x["model"] == row["model"] and x["state"] == "float32")
        same = sum(a == b for s, t in zip(row["tokens"], base["tokens"]) for a, b in zip(s, t))
        row["token_agreement"] = same / sum(len(s) for s in base["tokens"])
        row["sequences_identical"] = sum(s == t for s, t in zip(row["tokens"], base["tokens"]))
        row["prompts"] = len(base["tokens"])
    result = {"memory_bytes": MEMORY, "tokens": TOKENS, "rows": rows}
    (OUT / "engine.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def stage_recall(ckpt: Path, sequences: int) -> dict:
    from ghost_vllm.recall import MODEL_DIR

    configs = [("dense", "float32", MODEL_DIR, None), ("dense", "int8", MODEL_DIR, DENSE_INT8),
               ("adaptive-50%", "float32", ckpt, FP32), ("adaptive-50%", "int8", ckpt, None)]
    jobs = [{"name": f"{m} {dt}", "model": str(path), "memory": 64 * 2**20, "hf_overrides": ov, "recall": True,
             "recall_sequences": sequences, "one_token_steps": True, "max_model_len": 600}
            for m, dt, path, ov in configs]
    results = run_worker(jobs)
    rows = [{"model": m, "state": dt, **r["recall"]} for (m, dt, _, _), r in zip(configs, results)]
    result = {"sequences_per_level": sequences, "rows": rows}
    (OUT / "recall.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def stage_capacity(ckpt: Path) -> dict:
    from ghost_vllm.cli import main as cli

    out = OUT / "capacity"
    assert cli(["bench", "capacity", "--dense", "reference", "--pruned", str(ckpt), "--state-memory",
                str(CAPACITY_MEMORY), "--concurrency", "160", "--requests", "320", "--max-tokens", "64",
                "--repeats", "2", "--out", str(out)]) == 0
    return json.loads((out / "capacity.json").read_text())


# -- report ----------------------------------------------------------------------------------------------------

def report() -> None:
    fmt = [json.loads(x) for x in (OUT / "formats.jsonl").read_text().splitlines()]
    eng = json.loads((OUT / "engine.json").read_text()) if (OUT / "engine.json").exists() else None
    rec = json.loads((OUT / "recall.json").read_text()) if (OUT / "recall.json").exists() else None
    cap = OUT / "capacity" / "capacity.json"
    cap = json.loads(cap.read_text()) if cap.exists() else None
    dense = next(r for r in fmt if r["model"] == "dense" and r["format"] == "float32")
    names = {"float32": "float32", "int8": "int8, scale per head (served)", "int8_row": "int8, scale per (head, row)",
             "int8_sr": "int8, scale per head, stochastic rounding"}
    lines = ["# The int8 SSM-state cache on the reference model", "",
             f"Generated by `python benchmarks/int8_state.py`. WikiText-2 raw test, first {TOKENS:,} tokens, seq {SEQ}.", "",
             "## Formats (simulation: the state stored in the format after every token)", "",
             "| model | SSM state | B/sequence | vs dense float32 | ppl | Δppl vs dense float32 |", "|---|---|---|---|---|---|"]
    for r in fmt:
        lines.append(f"| {r['model']} | {names[r['format']]} | {r['bytes_per_sequence']:,} | "
                     f"{dense['bytes_per_sequence'] / r['bytes_per_sequence']:.2f}× fewer | {r['ppl']:.3f} | "
                     f"{100 * (r['ppl'] / dense['ppl'] - 1):+.3f} % |")
    if eng:
        sim = {(r["model"], r["format"]): r for r in fmt}
        base = next(r for r in eng["rows"] if r["model"] == "dense" and r["state"] == "float32")
        lines += ["", f"## vLLM engine (CPU, fp32 weights, {eng['memory_bytes']:,} B of state memory)", "",
                  "Perplexity through the engine: prompt log-probabilities, one token per engine step (every token's "
                  "state stored in the cache and read back). Greedy: 16 prompts × 32 tokens vs the same model with a "
                  "float32 state.", "",
                  "| model | SSM state | B/sequence | blocks (planned) | vs dense float32 | engine ppl | simulated ppl | "
                  "engine vs simulated | identical sequences | token agreement |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in eng["rows"]:
            s = sim.get((r["model"], r["state"]))
            lines.append(f"| {r['model']} | {r['state']} | {r['bytes_per_sequence']:,} | {r['num_gpu_blocks']} "
                         f"({r['planned_blocks']}) | {r['num_gpu_blocks'] / base['num_gpu_blocks']:.2f}× | {r['ppl']:.3f} | "
                         f"{s['ppl']:.3f} | {100 * (r['ppl'] / s['ppl'] - 1):+.4f} % | {r['sequences_identical']}/"
                         f"{r['prompts']} | {100 * r['token_agreement']:.1f} % |")
    if rec:
        lines += ["", f"## Recall through the engine (bundled MQAR model, {rec['sequences_per_level']} held-out sequences "
                      f"per level, 8-64 pairs; one token per engine step)", "",
                  "| model | SSM state | accuracy | vs the float32 state |", "|---|---|---|---|"]
        for r in rec["rows"]:
            b = next(x for x in rec["rows"] if x["model"] == r["model"] and x["state"] == "float32")
            lines.append(f"| {r['model']} | {r['state']} | {r['accuracy']:.4f} | {100 * r['accuracy'] / b['accuracy']:.1f} % |")
    if cap:
        lvl = next(iter(cap["summary"]["levels"].values()))
        d, p = lvl["dense"], lvl["pruned"]
        lines += ["", f"## Capacity (`ghost-vllm bench capacity`, {CAPACITY_MEMORY // 2**20} MiB of state memory, "
                      f"{cap['spec']['concurrency'][0]} closed-loop clients, {cap['spec']['requests']} requests × "
                      f"{cap['spec']['max_tokens']} tokens, {cap['spec']['repeats']} interleaved repeats)", "",
                  "| server | blocks | peak running | output tokens/s | TTFT p50 s |", "|---|---|---|---|---|",
                  f"| dense, float32 state | {d['num_gpu_blocks']} | {d['peak_running']:.0f} | {d['output_tokens_per_s']:.0f} | "
                  f"{d['ttft_s_p50']:.2f} |",
                  f"| adaptive-50 % + int8 state | {p['num_gpu_blocks']} | {p['peak_running']:.0f} | "
                  f"{p['output_tokens_per_s']:.0f} | {p['ttft_s_p50']:.2f} |",
                  f"| ratio (median of repeats) | {p['num_gpu_blocks'] / d['num_gpu_blocks']:.2f}× | "
                  f"{lvl['ratio']['peak_running']['median']:.2f}× | {lvl['ratio']['output_tokens_per_s']['median']:.2f}× | |"]
    (OUT / "int8_state.md").write_text("\n".join(lines) + "\n")
    (OUT / "int8_state.json").write_text(json.dumps({"formats": fmt, "engine": eng, "recall": rec,
                                                     "capacity": cap and cap["summary"]}, indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=("all", "formats", "engine", "recall", "capacity", "report"), default="all")
    ap.add_argument("--recall-sequences", type=int, default=256)
    ap.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    ckpts = checkpoints()
    if args.stage in ("all", "formats"):
        stage_formats(ckpts["reference"])
    if args.stage in ("all", "engine"):
        stage_engine(ckpts["reference"])
    if args.stage in ("all", "recall"):
        stage_recall(ckpts["recall"], args.recall_sequences)
    if args.stage in ("all", "capacity"):
        stage_capacity(ckpts["reference"])
    report()


if __name__ == "__main__":
    main()
