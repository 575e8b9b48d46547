"""``ghost:*`` Prometheus metrics on the vLLM server's own ``/metrics`` (stat-logger plugin, API-server process).

Metric names follow Prometheus rules (units in names, ``_total`` for counters) and never reuse a ``vllm:`` name
(vLLM unregisters those). Metrics are created once per process; labels carry the served model name. For any
architecture other than the ghost architectures of :data:`ghost_vllm.plugin.ARCHITECTURES` (all five families) the
logger stays inert and registers nothing. With tensor parallelism every byte and slot figure is one rank's (the
cache memory vLLM sizes is per rank, and so is each sequence's state), so slots = memory // bytes holds at any TP.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from prometheus_client import Counter, Gauge
from vllm.v1.metrics.loggers import StatLoggerBase

from ghost_vllm.plugin import ARCHITECTURES

__all__ = ["GhostStatLogger", "state_bytes", "dense_equivalent_slots"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _metrics() -> SimpleNamespace:
    """The process's metric objects (prometheus_client refuses a second registration of the same name)."""
    m = ["model_name"]
    return SimpleNamespace(
        state_size=Gauge("ghost:state_size", "SSM state channels per group (d_state)", m + ["variant"]),
        bytes_per_seq=Gauge("ghost:state_bytes_per_sequence", "Recurrent state bytes per sequence on one tensor-parallel "
                            "rank (conv + SSM, all layers, at the engine's cache dtypes)", m + ["variant"]),
        tp=Gauge("ghost:tensor_parallel_size", "Tensor-parallel ranks the state is sharded over", m),
        ratio=Gauge("ghost:state_reduction_ratio", "Original / pruned state bytes per sequence", m),
        slots=Gauge("ghost:state_slots", "Sequences the engine's cache holds at once (pure Mamba2: usable cache "
                    "blocks; hybrid: sequences of max_model_len tokens, attention KV and page padding included)", m),
        dense_slots=Gauge("ghost:dense_equivalent_state_slots", "The same figure for the original (dense) model in the "
                          "same cache memory", m),
        running=Gauge("ghost:num_requests_running", "Requests holding a state slot", m),
        waiting=Gauge("ghost:num_requests_waiting", "Requests waiting for a state slot", m),
        gen_tokens=Counter("ghost:generation_tokens", "Generated tokens", m),  # exported as ghost:generation_tokens_total
        throughput=Gauge("ghost:generation_throughput_tokens_per_second", "Generated tokens per second over the "
                         "last few seconds", m),
    )




def state_bytes(hf_config: Any, state_size: Optional[int], conv_dtype: str, ssm_dtype: str, tp: int = 1) -> int:
    """Per sequence, all layers, on one of ``tp`` ranks — the same arithmetic as vLLM's
    ``MambaStateShapeCalculator.mamba2_state_shape``; ``state_size=None`` prices the checkpoint's own (possibly
    per-layer) sizes."""
    from ghost_vllm.state import state_size_of

    cfg = hf_config.to_dict()
    cfg["layer_state_sizes"] = getattr(hf_config, "layer_state_sizes", None)
    s = state_size_of(cfg, state_size=state_size, dtype=conv_dtype, ssm_dtype=ssm_dtype, tensor_parallel_size=tp)
    return s.bytes_per_sequence


def dense_equivalent_slots(num_blocks: int, pruned_bytes: int, dense_bytes: int, memory_bytes: Optional[int]) -> int:
    """Usable slots (blocks - 1, one is vLLM's null block) the dense model would get from the same memory."""
    memory = memory_bytes if memory_bytes else num_blocks * pruned_bytes
    return max(0, memory // dense_bytes - 1)


class GhostStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        self.vllm_config = vllm_config
        self.engine_index = engine_index
        model_config = vllm_config.model_config
        self.active = any(a in ARCHITECTURES for a in (getattr(model_config, "architectures", None) or []))
        names = getattr(model_config, "served_model_name", None) or model_config.model
        self.model_name = names[0] if isinstance(names, (list, tuple)) else str(names)
        self._lock = threading.Lock()
        self._window: list[tuple[float, int]] = []
        if not self.active:
            return
        self.m = _metrics()
        hf = model_config.hf_config
        self.info = self._read_ghost(model_config.model, hf)
        conv_dtype, ssm_dtype = self._cache_dtypes()
        from ghost_vllm.families import family_for_config

        n = family_for_config(hf).state_size(hf)
        n0 = int(self.info.get("state_size_original", n))
        tp = int(getattr(getattr(vllm_config, "parallel_config", None), "tensor_parallel_size", 1) or 1)
        # per-layer sizes where the checkpoint has them; one rank's share. The served state may be the plugin's int8
        # (+ per-head scales); "original" is the dense model in vLLM's own SSM dtype, as it would be served without
        # ghost_vllm
        from ghost_vllm.ghost_format import config_state_dtype

        served_ssm = config_state_dtype(hf) or ssm_dtype
        self.pruned_bytes = state_bytes(hf, None, conv_dtype, served_ssm, tp)
        self.dense_bytes = state_bytes(hf, n0, conv_dtype, ssm_dtype, tp)
        label = {"model_name": self.model_name}
        self.m.tp.labels(**label).set(tp)
        self.m.state_size.labels(variant="original", **label).set(n0)
        self.m.state_size.labels(variant="pruned", **label).set(n)
        self.m.bytes_per_seq.labels(variant="original", **label).set(self.dense_bytes)
        self.m.bytes_per_seq.labels(variant="pruned", **label).set(self.pruned_bytes)
        self.m.ratio.labels(**label).set(self.dense_bytes / self.pruned_bytes)

    @staticmethod
    def _read_ghost(model: str, hf: Any) -> dict:
        from ghost_vllm.errors import CheckpointError
        from ghost_vllm.ghost_format import is_ghost_checkpoint, read_ghost_json

        if is_ghost_checkpoint(Path(model)):
            try:
                return read_ghost_json(Path(model))
            except (OSError, CheckpointError):
                log.warning("ghost metrics: %s/ghost.json unreadable; reporting the pruned size as original", model)
        from ghost_vllm.families import family_for_config

        return {"state_size_original": family_for_config(hf).state_size(hf)}

    def _cache_dtypes(self) -> tuple[str, str]:
        try:
            import importlib

            from ghost_vllm.families import family_for_config

            module, name = family_for_config(self.vllm_config.model_config.hf_config).vllm_model.split(":")
            model_cls = getattr(importlib.import_module(module), name)
            conv, ssm = model_cls.get_mamba_state_dtype_from_config(self.vllm_config)
            return str(conv).replace("torch.", ""), str(ssm).replace("torch.", "")
        except Exception:  # interface drift: fall back to the model dtype
            d = str(getattr(self.vllm_config.model_config, "dtype", "float32")).replace("torch.", "")
            return d, d

    def log_engine_initialized(self) -> None:
        if not self.active:
            return
        cache = self.vllm_config.cache_config
        blocks = int(getattr(cache, "num_gpu_blocks", 0) or 0)
        memory = getattr(cache, "kv_cache_memory_bytes", None)
        label = {"model_name": self.model_name}
        hybrid = self._hybrid_slots(blocks, memory)
        if hybrid is not None:
            self.m.slots.labels(**label).set(hybrid[0])
            self.m.dense_slots.labels(**label).set(hybrid[1])
            return
        self.m.slots.labels(**label).set(max(0, blocks - 1))
        self.m.dense_slots.labels(**label).set(dense_equivalent_slots(blocks, self.pruned_bytes, self.dense_bytes, memory))

    def _hybrid_slots(self, blocks: int, memory: Optional[int]) -> Optional[tuple[int, int]]:
        """(sequences of max_model_len tokens held at once, the same for the original N) for a hybrid, with the
        planner's hybrid arithmetic (the engine's page alignment, groups and attention KV); None for pure Mamba2."""
        from ghost_vllm.families import family_for_config

        hf = self.vllm_config.model_config.hf_config
        family = family_for_config(hf)
        tp = int(getattr(getattr(self.vllm_config, "parallel_config", None), "tensor_parallel_size", 1) or 1)
        if not family.attention_layers(hf) or tp != 1:  # the hybrid arithmetic models TP 1
            return None
        try:
            from vllm.platforms import current_platform

            from ghost_vllm.planner.hybrid import hybrid_bytes, sequences_in

            cfg = hf.to_dict()
            conv, ssm = self._cache_dtypes()
            mode = "align" if getattr(self.vllm_config.cache_config, "mamba_cache_mode", "none") == "align" else "none"
            context = int(self.vllm_config.model_config.max_model_len)
            platform = "cpu" if current_platform.is_cpu() else "cuda"
            n0 = int(self.info.get("state_size_original", family.state_size(hf)))
            mine = hybrid_bytes(cfg, context, dtype=conv, ssm_dtype=ssm, platform=platform, mamba_cache_mode=mode)
            dense = hybrid_bytes({**cfg, family.state_key: n0}, context, dtype=conv, ssm_dtype=ssm, platform=platform,
                                 mamba_cache_mode=mode)
        except Exception as e:  # interface drift or an unmodelled layout: say so, report the engine's blocks only
            log.warning("ghost metrics: hybrid slots not computed (%s); ghost:state_slots = cache blocks − 1", e)
            return None
        memory = memory or blocks * mine.layout.bytes_per_block
        return max(blocks - 1, 0) // mine.blocks, sequences_in(memory, dense)

    def record(self, scheduler_stats, iteration_stats, *args, **kwargs) -> None:
        if not self.active:
            return
        label = {"model_name": self.model_name}
        if scheduler_stats is not None:
            self.m.running.labels(**label).set(getattr(scheduler_stats, "num_running_reqs", 0))
            self.m.waiting.labels(**label).set(getattr(scheduler_stats, "num_waiting_reqs", 0))
        if iteration_stats is not None:
            n = int(getattr(iteration_stats, "num_generation_tokens", 0) or 0)
            if n:
                self.m.gen_tokens.labels(**label).inc(n)
            now = time.monotonic()
            with self._lock:
                self._window.append((now, n))
                self._window = [(t, k) for t, k in self._window if now - t <= 5.0]
                span = max(now - self._window[0][0], 1e-3) if len(self._window) > 1 else None
                rate = sum(k for _, k in self._window[1:]) / span if span else 0.0
            self.m.throughput.labels(**label).set(rate)
