"""``GhostMamba2ForCausalLM``: the stock vLLM Mamba2 with the checkpoint validated before anything is allocated, and
each layer built with its own state size when the checkpoint has per-layer budgets (``layer_state_sizes``).

vLLM sizes the SSM cache from ``hf_config.state_size`` (N' in a ghost checkpoint) through the stock mixer, so the
engine's state slots grow by the byte ratio without further changes. The validation matters because vLLM's fused
loaders slice the in_proj/conv1d tensors with ``narrow``: a checkpoint whose weights are *larger* than its config says
would load silently with misaligned x/B/C/dt rows and produce garbage.

Per-layer budgets: the stock model builds every layer at ``state_size`` (the largest N'_l); layers with a smaller
N'_l are rebuilt at their own size (their mixers re-registered under the same layer name), and every mixer reports a
:class:`~ghost_vllm.plugin.spec.GhostMambaSpec` so that the engine allocates Σ_l bytes(N'_l) per sequence. The vLLM
patch this needs is applied here, in the worker, and only for such a checkpoint; a uniform checkpoint is served by
the stock classes exactly as before.

Projected state (``ghost_state_ranks``, :mod:`ghost_vllm.plugin.projected`): every layer is built at N, then its
mixer converted to an SSM state r_l wide with its ``state_proj_in`` / ``state_proj_out`` tensors, which
:meth:`GhostMamba2ForCausalLM.load_weights` requires (a missing one fails start-up, naming it). Composes with the int8
state; ranks that differ per layer need the same patch as per-layer sizes.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from vllm.model_executor.models.config import MambaModelConfig
from vllm.model_executor.models.mamba2 import Mamba2DecoderLayer, Mamba2ForCausalLM

from ghost_vllm.ghost_format import config_state_dtype, config_state_ranks, config_state_sizes, is_ghost_checkpoint
from ghost_vllm.mamba.budgets import is_uniform
from ghost_vllm.plugin.mixer import GhostMambaMixer2
from ghost_vllm.plugin.validate import validate_ghost_checkpoint

__all__ = ["GhostMamba2ForCausalLM", "GhostMambaModelConfig", "GhostMambaMixer2", "check_checkpoint"]

log = logging.getLogger(__name__)


def _pruned_on_disk(model_dir: Path) -> bool:
    """Whether the directory holds a pruned checkpoint: a ghost.json, or a config.json naming a ghost architecture
    (what prune writes). A plain Mamba2 served through the ghost class by a serve-time ``--hf-overrides`` (the int8
    state for a dense model) is neither."""
    import json

    from ghost_vllm.families import GHOST_ARCHITECTURES

    if is_ghost_checkpoint(model_dir):
        return True
    try:
        archs = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return True  # unreadable: let the validation say what is wrong
    return any(a in GHOST_ARCHITECTURES for a in archs)


def check_checkpoint(model: str) -> None:
    if os.path.isdir(model) and not _pruned_on_disk(Path(model)):
        log.info("%s is not a pruned checkpoint (its config.json names no ghost architecture): served as it is", model)
    elif os.path.isdir(model):
        info = validate_ghost_checkpoint(Path(model))
        log.info("ghost checkpoint %s: state_size %d → %d, %d B/sequence (%.3f× smaller state)", model,
                 info["state_size_original"], info["state_size"], info["bytes_per_sequence"],
                 info["state_reduction_ratio"])
    else:
        log.warning("ghost checkpoint %s is not a local directory; skipping the pre-load consistency checks", model)


class GhostMambaModelConfig(MambaModelConfig):
    """Runs in the front-end process while the config is built, before any engine process starts."""

    @classmethod
    def verify_and_update_config(cls, vllm_config) -> None:
        from ghost_vllm.plugin.preflight import preflight_vllm_config

        check_checkpoint(vllm_config.model_config.model)
        preflight_vllm_config(vllm_config)
        super().verify_and_update_config(vllm_config)
        if config_state_dtype(vllm_config.model_config.hf_config) == "int8":
            from ghost_vllm.plugin.int8_mixer import check_int8_engine

            check_int8_engine(vllm_config)  # after vLLM's defaults (prefix caching), before any worker starts


class GhostMamba2ForCausalLM(Mamba2ForCausalLM):
    """Stock Mamba2 for a ghost checkpoint (``config.state_size`` = N', or per layer ``layer_state_sizes``)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        check_checkpoint(vllm_config.model_config.model)  # again in the worker: the config map may have been bypassed
        hf = vllm_config.model_config.hf_config
        sizes = config_state_sizes(hf)
        ranks = config_state_ranks(hf)
        int8 = config_state_dtype(hf) == "int8"
        if int8:
            from ghost_vllm.plugin.int8_mixer import check_int8_engine

            check_int8_engine(vllm_config)
        if not is_uniform(sizes) or (ranks is not None and not is_uniform(ranks)):
            from ghost_vllm_patches import PATCHES, apply_patch

            apply_patch(PATCHES["ssu-backend-uniform-type"])  # before any layer is built: refuse early
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if not is_uniform(sizes):
            self._build_per_layer(vllm_config, sizes)
        if int8:
            from ghost_vllm.plugin.int8_mixer import GhostInt8MambaMixer2

            for layer in self.backbone.layers:
                if isinstance(layer, Mamba2DecoderLayer):
                    layer.mixer.__class__ = GhostInt8MambaMixer2
            log.info("ghost int8 SSM state: int8 + one float32 scale per head in every Mamba layer")
        self._projections: list[str] = []
        if ranks is not None:
            self._project(hf, ranks)

    def _project(self, hf, ranks: list[int]) -> None:
        from ghost_vllm.plugin.projected import project_mixer, projection_names

        for layer, r in zip(self.backbone.layers, ranks):
            if isinstance(layer, Mamba2DecoderLayer):  # else another pipeline stage's layer
                project_mixer(layer.mixer, r, int(hf.n_groups))
                self._projections += projection_names(layer.mixer.prefix)
        log.info("ghost projected SSM state: ranks %s (conv state and in_proj at state_size %d)", ranks,
                 int(hf.state_size))

    def load_weights(self, weights) -> set[str]:
        loaded = super().load_weights(weights)
        missing = [n for n in self._projections if n not in loaded]
        if missing:
            raise ValueError(f"ghost projected checkpoint: model.safetensors lacks {', '.join(missing)} "
                             f"(config.json lists ghost_state_ranks); re-run 'ghost-vllm prune'")
        return loaded

    def _build_per_layer(self, vllm_config, sizes: list[int]) -> None:
        hf = vllm_config.model_config.hf_config
        registry = vllm_config.compilation_config.static_forward_context
        layers = self.backbone.layers
        for i, n in enumerate(sizes):
            layer = layers[i]
            if not isinstance(layer, Mamba2DecoderLayer):
                continue  # another pipeline stage's layer
            if n != int(hf.state_size):
                name = layer.mixer.prefix
                del registry[name]  # the stock layer registered itself; its replacement takes the same name
                layer_config = copy.copy(hf)
                layer_config.state_size = n
                layer = Mamba2DecoderLayer(layer_config, model_config=vllm_config.model_config,
                                           cache_config=vllm_config.cache_config, quant_config=vllm_config.quant_config,
                                           prefix=name.rsplit(".", 1)[0])
                layers[i] = layer
            # a subclass that adds no state, only the per-layer cache spec
            layer.mixer.__class__ = GhostMambaMixer2
        log.info("ghost checkpoint with per-layer state sizes %s: %d layers rebuilt", sizes,
                 sum(n != int(hf.state_size) for n in sizes))
