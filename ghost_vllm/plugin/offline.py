"""Offline vLLM engines (``vllm.LLM``) for the CLI: state slots of dense vs pruned in the same state memory, and
sample completions. Each engine is built, used and released in turn."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["EngineProbe", "probe_engine"]

log = logging.getLogger(__name__)


@dataclass
class EngineProbe:
    model: str
    num_gpu_blocks: int
    state_slots: int
    completions: list[str] = field(default_factory=list)


def probe_engine(model: str, state_memory_bytes: int, prompts: Optional[list[str]] = None, max_tokens: int = 24,
                 dtype: str = "float32", max_model_len: int = 1024) -> EngineProbe:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=dtype, kv_cache_memory_bytes=state_memory_bytes, max_model_len=max_model_len,
              enforce_eager=True, enable_prefix_caching=False, seed=0)
    blocks = int(llm.llm_engine.vllm_config.cache_config.num_gpu_blocks)
    probe = EngineProbe(model, blocks, blocks - 1)
    if prompts:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        probe.completions = [r.outputs[0].text for r in llm.generate(prompts, params, use_tqdm=False)]
    del llm
    gc.collect()
    return probe
