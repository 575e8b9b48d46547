"""vLLM plugin: serves ghost checkpoints (``architectures: ["GhostMamba2ForCausalLM"]``, or the hybrid families'
``GhostNemotronHForCausalLM``, ``GhostGraniteMoeHybridForCausalLM``, ``GhostFalconH1ForCausalLM``,
``GhostZamba2ForCausalLM``) with a cache sized for N'.

Entry points (pyproject.toml):
- ``vllm.general_plugins``  → :func:`register` (runs in every vLLM process; idempotent; lazy ``module:Class``);
- ``vllm.stat_logger_plugins`` → :class:`ghost_vllm.plugin.metrics.GhostStatLogger` (``ghost:*`` Prometheus metrics).

This package and its submodules are the only places in ghost_vllm that import vLLM or prometheus_client.
"""

from __future__ import annotations

import logging

from ghost_vllm.families import GHOST_ARCHITECTURES

__all__ = ["ARCHITECTURE", "ARCHITECTURES", "register"]

ARCHITECTURE = "GhostMamba2ForCausalLM"
# ghost architecture → (model class, config-map class), lazy "module:Class" strings, one per model family
ARCHITECTURES = {a: (f.ghost_vllm_model, f.ghost_vllm_config) for a, f in GHOST_ARCHITECTURES.items()}
log = logging.getLogger(__name__)


def register() -> None:
    """Register the ghost architecture with vLLM's model registry and its Mamba config map. Safe to call repeatedly,
    in any process; changes nothing for other architectures."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    import importlib

    supported = ModelRegistry.get_supported_archs()
    for arch, (model_cls, config_cls) in ARCHITECTURES.items():
        if arch not in supported:
            ModelRegistry.register_model(arch, model_cls)
        if arch not in MODELS_CONFIG_MAP:
            # Mamba2: without a MambaModelConfig entry start-up fails (`assert mamba_block_size is not None`);
            # Nemotron-H: without its own entry the SSM state silently follows the model dtype instead of float32
            module, name = config_cls.split(":")
            MODELS_CONFIG_MAP[arch] = getattr(importlib.import_module(module), name)
    _cpu_default_cache_size()


def _cpu_default_cache_size() -> None:
    """On the CPU platform: install the ``cpu-default-cache-size`` patch (a cache size that fits when none is given
    and vLLM's default would not; inert otherwise). Refused on another vLLM with one warning line, never fatal."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from ghost_vllm_patches import PATCHES, PatchError, apply_patch

    try:
        apply_patch(PATCHES["cpu-default-cache-size"])
    except PatchError as e:
        log.warning("ghost_vllm: %s (on CPU, pass --kv-cache-memory-bytes)", e)
