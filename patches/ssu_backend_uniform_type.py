"""Patch ``ssu-backend-uniform-type``: initialise the Mamba state-update backend when the Mamba layers share one
KV-cache group of per-layer specs.

Upstream (vLLM 0.32.0, ``vllm/model_executor/layers/mamba/ops/ssu_dispatch.py``)::

    def initialize_mamba_ssu_backend(mamba_config, kv_cache_config, *, use_replayssm=False):
        if not any(
            isinstance(g.kv_cache_spec, MambaSpec)
            and g.kv_cache_spec.mamba_type in (MAMBA1, MAMBA2)
            for g in kv_cache_config.kv_cache_groups
        ):
            return
        ...

A per-layer-budget ghost checkpoint gives every layer its own ``GhostMambaSpec`` (its own page size); vLLM's
grouping puts them into ONE group of type ``UniformTypeKVCacheSpecs`` (page = Σ_l page_l, so the engine allocates
exactly the bytes the layers need). That wrapper is not a ``MambaSpec``, so the check above returns early, no state
update backend is created, and the first decode step dies with "Mamba SSU backend has not been initialized". The
worker reads per-layer specs correctly everywhere else (``iter_layer_specs`` / ``first_spec``); the scheduler gets
the first per-layer spec (``generate_scheduler_kv_cache_config``).

The replacement calls the original with a view of the config in which such a group shows its first per-layer spec
(what the scheduler sees). Groups of any other kind pass through untouched, so the patch is inert for every model
whose layers are not ``GhostMambaSpec``; it is installed only when a non-uniform ghost checkpoint is served.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

from ghost_vllm_patches.base import VllmPatch

__all__ = ["PATCH", "install"]

TARGET_MODULE = "vllm.model_executor.layers.mamba.ops.ssu_dispatch"
# modules that imported the function by name before the patch runs (the model runners)
IMPORTERS = ("vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner")


def _unwrapped(kv_cache_config):
    from vllm.v1.kv_cache_interface import KVCacheGroupSpec, UniformTypeKVCacheSpecs

    from ghost_vllm.plugin.spec import GhostMambaSpec

    groups = []
    for g in kv_cache_config.kv_cache_groups:
        spec = g.kv_cache_spec
        if isinstance(spec, UniformTypeKVCacheSpecs) and isinstance(spec.first_spec, GhostMambaSpec):
            g = KVCacheGroupSpec(g.layer_names, spec.first_spec)
        groups.append(g)
    return dataclasses.replace(kv_cache_config, kv_cache_groups=groups)


def install() -> None:
    dispatch = importlib.import_module(TARGET_MODULE)
    original = dispatch.initialize_mamba_ssu_backend
    if getattr(original, "__ghost_original__", None) is not None:
        return  # already installed in this process

    def initialize_mamba_ssu_backend(mamba_config, kv_cache_config, *, use_replayssm: bool = False) -> None:
        return original(mamba_config, _unwrapped(kv_cache_config), use_replayssm=use_replayssm)

    initialize_mamba_ssu_backend.__ghost_original__ = original
    initialize_mamba_ssu_backend.__doc__ = original.__doc__
    dispatch.initialize_mamba_ssu_backend = initialize_mamba_ssu_backend
    for name in IMPORTERS:  # a runner imported later picks the patched function up from the module itself
        module = sys.modules.get(name)
        if module is not None and getattr(module, "initialize_mamba_ssu_backend", None) is original:
            module.initialize_mamba_ssu_backend = initialize_mamba_ssu_backend


PATCH = VllmPatch(
    name="ssu-backend-uniform-type",
    target=f"{TARGET_MODULE}:initialize_mamba_ssu_backend",
    # identical source (and the whole ssu_dispatch.py) in 0.32.0 and 0.33.0; 0.33.0 read from its wheel
    # (benchmarks/vllm033_check.py: stock code still fails the per-layer group, the patched code initialises it)
    target_sha256={"0.32.0": "53ad3ae84c39a0eb529e9bd1af93e20aa5dd78dd3bfab0255c16bffebcfbba99",
                   "0.33.0": "53ad3ae84c39a0eb529e9bd1af93e20aa5dd78dd3bfab0255c16bffebcfbba99"},
    why="the Mamba state-update backend is never initialised when the Mamba layers share one per-layer-spec group",
    install=install,
    needed_for="a ghost checkpoint with per-layer state sizes",
)
