"""``GhostMamba2ForCausalLM``: the stock vLLM Mamba2 with the checkpoint validated before anything is allocated.

vLLM sizes the SSM cache from ``hf_config.state_size`` (N' in a ghost checkpoint) through the stock mixer, so the
engine's state slots grow by the byte ratio without further changes. The validation matters because vLLM's fused
loaders slice the in_proj/conv1d tensors with ``narrow``: a checkpoint whose weights are *larger* than its config says
would load silently with misaligned x/B/C/dt rows and produce garbage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vllm.model_executor.models.config import MambaModelConfig
from vllm.model_executor.models.mamba2 import Mamba2ForCausalLM

from ghost_vllm.plugin.validate import validate_ghost_checkpoint

__all__ = ["GhostMamba2ForCausalLM", "GhostMambaModelConfig"]

log = logging.getLogger(__name__)


def _check(model: str) -> None:
    if os.path.isdir(model):
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
        _check(vllm_config.model_config.model)
        super().verify_and_update_config(vllm_config)


class GhostMamba2ForCausalLM(Mamba2ForCausalLM):
    """Stock Mamba2 for a ghost checkpoint (``config.state_size`` = N')."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        _check(vllm_config.model_config.model)  # again in the worker: the config map may have been bypassed
        super().__init__(vllm_config=vllm_config, prefix=prefix)
