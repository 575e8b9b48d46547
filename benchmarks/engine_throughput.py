"""Where decode time goes: engine-only throughput (offline ``vllm.LLM``, no HTTP) of dense vs pruned at the same
state memory, interleaved repeats, compared with what the OpenAI server delivers in the capacity benchmark.

    python benchmarks/engine_throughput.py [--dense reference] [--pruned build/reference-ghost50]
        [--state-memory 26100000] [--requests 256] [--max-tokens 128] [--repeats 3]

Each engine runs in a fresh subprocess (one engine per process); results: benchmarks/results/engine_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"

CHILD = r"""
import json, sys, time
from vllm import LLM, SamplingParams
from ghost_vllm.loadtest.capacity import make_prompts
spec = json.loads(sys.argv[1])
llm = LLM(model=spec["model"], dtype="float32", kv_cache_memory_bytes=spec["memory"], max_model_len=1024,
          enforce_eager=True, enable_prefix_caching=False, seed=0)
prompts = [{"prompt_token_ids": p} for p in make_prompts(spec["model"], spec["requests"], spec["prompt_len"], 0)]
params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
llm.generate(prompts[:32], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True), use_tqdm=False)  # warm-up
t0 = time.perf_counter()
outs = llm.generate(prompts, params, use_tqdm=False)
dt = time.perf_counter() - t0
tokens = sum(len(o.outputs[0].token_ids) for o in outs)
print("RESULT " + json.dumps({"seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt,
      "num_gpu_blocks": llm.llm_engine.vllm_config.cache_config.num_gpu_blocks}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", default="reference")
    ap.add_argument("--pruned", default="build/reference-ghost50")
    ap.add_argument("--state-memory", type=int, default=26_100_000)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from ghost_vllm.sources import resolve_model_path

    runs = []
    for rep in range(args.repeats):
        for variant, model in (("dense", args.dense), ("pruned", args.pruned)):
            spec = {"model": str(resolve_model_path(model)), "memory": args.state_memory, "requests": args.requests,
                    "prompt_len": args.prompt_len, "max_tokens": args.max_tokens}
            r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, check=True)
            res = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
            runs.append({"repeat": rep, "variant": variant, **res})
            print(runs[-1], flush=True)
    ratios = [next(r["tokens_per_s"] for r in runs if r["repeat"] == k and r["variant"] == "pruned")
              / next(r["tokens_per_s"] for r in runs if r["repeat"] == k and r["variant"] == "dense")
              for k in range(args.repeats)]
    med = {v: statistics.median(r["tokens_per_s"] for r in runs if r["variant"] == v) for v in ("dense", "pruned")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine_throughput.json").write_text(json.dumps({"args": vars(args), "runs": runs, "ratios": ratios}, indent=1))
    slots = {v: next(r["num_gpu_blocks"] for r in runs if r["variant"] == v) - 1 for v in ("dense", "pruned")}
    md = [f"Offline vLLM engine (no HTTP), {args.requests} requests × {args.max_tokens} tokens, prompt {args.prompt_len}, "
          f"state memory {args.state_memory:,} B, {args.repeats} interleaved repeats (this 2-core CPU).", "",
          "| model | state slots | output tok/s (median) |", "|---|---|---|",
          f"| dense | {slots['dense']} | {med['dense']:.0f} |", f"| pruned | {slots['pruned']} | {med['pruned']:.0f} |", "",
          f"pruned/dense: median {statistics.median(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}]"]
    (OUT / "engine_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
