"""Run vLLM engines in this (fresh) process and report through a JSON file — used by the tests via subprocess.

    python tests/helpers/vllm_jobs.py SPEC.json OUT.json

SPEC: {"jobs": [{"model": DIR, "prompts": [[ids...], ...], "max_tokens": 8, "kv_cache_memory_bytes": N,
                 "max_model_len": 512, "mamba_ssm_cache_dtype": "auto", "apply_patches": ["patch-name", ...]}]}
("apply_patches" installs ghost_vllm_patches in this process first; run with VLLM_ENABLE_V1_MULTIPROCESSING=0 so
the engine runs in this process too.)
OUT:  {"results": [{"model": DIR, "tokens": [[ids...]], "num_gpu_blocks": N, "error": null | "Type: message"}]}
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
            mamba_ssm_cache_dtype=job.get("mamba_ssm_cache_dtype", "auto"),
            enforce_eager=True,
            enable_prefix_caching=False,
            seed=0,
        )
    except Exception as e:  # the tests assert on this message
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["num_gpu_blocks"] = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
    if job.get("prompts"):
        params = SamplingParams(temperature=0.0, max_tokens=int(job.get("max_tokens", 8)), ignore_eos=True)
        results = llm.generate([{"prompt_token_ids": p} for p in job["prompts"]], params, use_tqdm=False)
        out["tokens"] = [list(r.outputs[0].token_ids) for r in results]
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
