"""Config-map classes of the hybrid ghost architectures (``MODELS_CONFIG_MAP``): the checkpoint is validated in the
front-end process before any engine starts, then the family's own entry (if it has one) runs. Imported by
``register()`` in every vLLM process, so it imports no model module."""

from __future__ import annotations

from vllm.model_executor.models.config import NemotronHForCausalLMConfig, VerifyAndUpdateConfig

__all__ = ["GhostNemotronHConfig", "GhostHybridConfig"]


def _check(vllm_config) -> None:
    from ghost_vllm.plugin.model import check_checkpoint as check
    from ghost_vllm.plugin.preflight import preflight_vllm_config

    check(vllm_config.model_config.model)
    preflight_vllm_config(vllm_config)


class GhostNemotronHConfig(NemotronHForCausalLMConfig):
    @classmethod
    def verify_and_update_config(cls, vllm_config) -> None:
        _check(vllm_config)
        super().verify_and_update_config(vllm_config)


class GhostHybridConfig(VerifyAndUpdateConfig):
    """For families without a config-map entry of their own: validation only."""

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        _check(vllm_config)
