"""Ghost architectures of the hybrid families: the stock vLLM model of each family with the checkpoint validated
before anything is allocated (in the front-end through the config map, again in the worker), so a ghost checkpoint
whose weights disagree with its config is refused in one line instead of loading misaligned rows.

vLLM sizes each Mamba layer's state from the family's d_state key (``ssm_state_size`` / ``mamba_d_state``), which a
ghost checkpoint sets to N'; the attention layers, the hybrid page alignment and everything else are stock. Each
ghost architecture maps to its family's own ``MODELS_CONFIG_MAP`` entry (Nemotron-H: ``NemotronHForCausalLMConfig``,
which picks the float32 SSM-state dtype — without it the state would silently follow the model dtype); the other
families have none, and vLLM's hybrid handling (``model_config.is_hybrid``, inherited from the stock class) runs as
for the stock architecture. The config-map classes live in :mod:`ghost_vllm.plugin.configs` (light: ``register()``
imports them in every vLLM process, this module only when a ghost hybrid is served)."""

from __future__ import annotations

from vllm.model_executor.models.falcon_h1 import FalconH1ForCausalLM
from vllm.model_executor.models.granitemoehybrid import GraniteMoeHybridForCausalLM
from vllm.model_executor.models.nemotron_h import NemotronHForCausalLM
from vllm.model_executor.models.zamba2 import Zamba2ForCausalLM

from ghost_vllm.plugin.model import check_checkpoint

__all__ = ["GhostNemotronHForCausalLM", "GhostGraniteMoeHybridForCausalLM", "GhostFalconH1ForCausalLM",
           "GhostZamba2ForCausalLM"]


class _Validated:
    """Validates the checkpoint in the worker before the stock model builds (the config map may have been
    bypassed); put first in the bases so it runs before the family's ``__init__``."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        check_checkpoint(vllm_config.model_config.model)
        super().__init__(vllm_config=vllm_config, prefix=prefix)


class GhostNemotronHForCausalLM(_Validated, NemotronHForCausalLM):
    pass


class GhostGraniteMoeHybridForCausalLM(_Validated, GraniteMoeHybridForCausalLM):
    pass


class GhostFalconH1ForCausalLM(_Validated, FalconH1ForCausalLM):
    pass


class GhostZamba2ForCausalLM(_Validated, Zamba2ForCausalLM):
    pass
