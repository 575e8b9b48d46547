"""Patch ``cpu-default-cache-size``: on the CPU backend, when no cache size is given and vLLM's default would not
fit in host memory, choose a size that fits and say so in one line.

Upstream (vLLM 0.32.0): ``vllm/platforms/cpu.py: CpuPlatform.check_and_update_config`` sets
``cache_config.kv_cache_memory_bytes`` only from ``VLLM_CPU_KVCACHE_SPACE``; otherwise the CPU worker
(``vllm/v1/worker/cpu_worker.py``) reserves ``--gpu-memory-utilization`` (default 0.92) of the *host's* memory and
dies at start-up when that much is not free — ``ValueError: Available memory on node 0 (10.24/11.59 GiB) on startup
is less than desired CPU memory utilization (0.92, 10.66 GiB)`` — which is what every ``vllm serve DIR`` without a
cache flag does on a machine that is running anything else.

The replacement runs before the original and acts only when all of these hold: no ``--kv-cache-memory-bytes``, no
``VLLM_CPU_KVCACHE_SPACE``, and ``gpu_memory_utilization × total`` exceeds 90 % of the available memory of the node
vLLM binds to (the original would fail, or leave the host nearly nothing). It then sets ``kv_cache_memory_bytes`` to
:func:`ghost_vllm.planner.cpu_cache.default_cpu_cache_bytes` (a quarter of the available memory, at most 4 GiB) and
logs what it chose and, for a Mamba2 or ghost model, how many sequences that holds. Any configuration stock vLLM
starts with is left exactly as it was, for every model. Applied by the plugin's ``register()`` on the CPU platform.
"""

from __future__ import annotations

import logging
import math
import os

from ghost_vllm_patches.base import VllmPatch

__all__ = ["PATCH", "install", "choose_cache_size"]

log = logging.getLogger("ghost_vllm")
TARGET = "vllm.platforms.cpu:CpuPlatform.check_and_update_config"
MARGIN = 0.9  # act when the requested memory exceeds this share of the available memory


def _node_memory() -> tuple[int, int]:
    """(total, available) bytes of the memory node the CPU worker binds to (as cpu_worker.py reads it)."""
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        info = get_memory_node_info(get_allowed_cpu_list()[0].numa_node)
        return int(info.total_memory), int(info.available_memory)
    except Exception:  # unusual topology: the system-wide figures
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)


def choose_cache_size(vllm_config, memory: tuple[int, int] | None = None) -> int | None:
    """Set ``kv_cache_memory_bytes`` when the conditions in the module doc hold; return the size set (or None)."""
    from ghost_vllm.planner.cpu_cache import capacity_line, default_cpu_cache_bytes

    cache = vllm_config.cache_config
    if cache.kv_cache_memory_bytes is not None or os.environ.get("VLLM_CPU_KVCACHE_SPACE", "") != "":
        return None
    total, available = memory or _node_memory()
    requested = math.ceil(total * cache.gpu_memory_utilization)
    if requested <= MARGIN * available:
        return None
    size = default_cpu_cache_bytes(available)
    cache.kv_cache_memory_bytes = size
    model = vllm_config.model_config
    holds = None
    if model is not None:
        holds = capacity_line(model.hf_config.to_dict(), str(model.dtype).replace("torch.", ""),
                              str(cache.mamba_ssm_cache_dtype), size)
    log.warning("ghost_vllm: no cache size given on CPU and --gpu-memory-utilization %s of host memory (%.2f GiB) "
                "does not fit the %.2f GiB available: using --kv-cache-memory-bytes %d (%.2f GiB)%s; pass "
                "--kv-cache-memory-bytes to choose", cache.gpu_memory_utilization, requested / 2**30,
                available / 2**30, size, size / 2**30, f", {holds}" if holds else "")
    return size


def install() -> None:
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.__dict__["check_and_update_config"].__func__
    if getattr(original, "__ghost_original__", None) is not None:
        return  # already installed in this process

    def check_and_update_config(cls, vllm_config) -> None:
        choose_cache_size(vllm_config)
        return original(cls, vllm_config)

    check_and_update_config.__ghost_original__ = original
    check_and_update_config.__doc__ = original.__doc__
    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


PATCH = VllmPatch(
    name="cpu-default-cache-size",
    target=TARGET,
    # vllm-cpu (the CPU platform this patches) stops at 0.32.0; 0.33.0's CpuPlatform.check_and_update_config changed
    # (sha256 c86f1806…: its 128-token default block size moved to update_block_size_for_backend)
    target_sha256={"0.32.0": "d2960ad5d183676793d6988a9a4ed50175d18dbf8baf70fc01f686d50887a0df"},
    why="vllm serve without a cache flag dies on CPU when 0.92 of host memory is not free",
    install=install,
    needed_for="serving on CPU without --kv-cache-memory-bytes",
    fallback="pass --kv-cache-memory-bytes",
)
