"""Run vLLM engines in this (fresh) process and report through a JSON file — used by the tests via subprocess.

    python tests/helpers/vllm_jobs.py SPEC.json OUT.json

SPEC: {"jobs": [{"model": DIR, "prompts": [[ids...], ...], "max_tokens": 8, "kv_cache_memory_bytes": N,
                 "max_model_len": 512, "mamba_ssm_cache_dtype": "auto", "apply_patches": ["patch-name", ...],
                 "hf_overrides": {...}, "score": [[ids...], ...], "long_prefill_token_threshold": 1,
                 "tensor_parallel_size": 1}]}
("apply_patches" installs ghost_vllm_patches in this process first; run with VLLM_ENABLE_V1_MULTIPROCESSING=0 so
the engine runs in this process too.)
OUT:  {"results": [{"model": DIR, "tokens": [[ids...]], "num_gpu_blocks": N, "error": null | "Type: message",
                   "nll": [float, ...] (with "score": −Σ log p of each prompt's tokens after its first),
                   "logprobs": [[float, ...], ...] (with "score": log p of each of those tokens)}]}
"long_prefill_token_threshold": 1 feeds every prompt one token per engine step, so each token's state goes through
the cache (what decode does) and prompt log-probabilities see the stored state format.
"""

from __future__ import annotations

import gc
import json
import sys


def run_job(job: dict) -> dict:
    from vllm import LLM, SamplingParams

    out = {"model": job["model"], "tokens": None, "num_gpu_blocks": None, "error": None}
    if job.get("apply_patches"):
        from ghost_vllm_patches import PATCHES, apply_patch

        for name in job["apply_patches"]:
            apply_patch(PATCHES[name])
    try:
        llm = LLM(
            model=job["model"],
            dtype=job.get("dtype", "float32"),
            kv_cache_memory_bytes=int(job.get("kv_cache_memory_bytes", 64 * 2**20)),
            max_model_len=int(job.get("max_model_len", 512)),
            max_num_seqs=int(job.get("max_num_seqs", 256)),
            tensor_parallel_size=int(job.get("tensor_parallel_size", 1)),
            mamba_ssm_cache_dtype=job.get("mamba_ssm_cache_dtype", "auto"),
            enforce_eager=True,
            enable_prefix_caching=bool(job.get("enable_prefix_caching", False)),
            seed=0,
            **({"hf_overrides": job["hf_overrides"]} if job.get("hf_overrides") else {}),
            **({"long_prefill_token_threshold": int(job["long_prefill_token_threshold"]),
                "enable_chunked_prefill": True} if job.get("long_prefill_token_threshold") else {}),
        )
    except Exception as e:  # the tests assert on this message
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["num_gpu_blocks"] = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
    if job.get("prompts"):
        params = SamplingParams(temperature=0.0, max_tokens=int(job.get("max_tokens", 8)), ignore_eos=True)
        results = llm.generate([{"prompt_token_ids": p} for p in job["prompts"]], params, use_tqdm=False)
        out["tokens"] = [list(r.outputs[0].token_ids) for r in results]
    if job.get("score"):  # Σ −log p(token) over every prompt token after the first, per prompt (prompt_logprobs)
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        results = llm.generate([{"prompt_token_ids": p} for p in job["score"]], params, use_tqdm=False)
        out["logprobs"] = [[lp[t].logprob for lp, t in zip(r.prompt_logprobs[1:], p[1:])]
                           for r, p in zip(results, job["score"])]
        out["nll"] = [-sum(lps) for lps in out["logprobs"]]
    del llm
    gc.collect()
    return out


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    results = [run_job(job) for job in spec["jobs"]]
    with open(sys.argv[2], "w") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
