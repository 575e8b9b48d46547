"""Model families behind one interface (:class:`~ghost_vllm.families.base.Family`), looked up by ``model_type``.

Pure Mamba2 is the first family, not a special case; the hybrids (Nemotron-H, Granite-4.0-H, Falcon-H1, Zamba2) carry
their attention, MLP/MoE and shared blocks through unchanged while their Mamba2 mixers are scored and truncated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ghost_vllm.errors import ModelError
from ghost_vllm.families.base import Family, cfg_get
from ghost_vllm.families.falcon_h1 import FalconH1Family
from ghost_vllm.families.granite import GraniteHybridFamily
from ghost_vllm.families.mamba2 import Mamba2Family
from ghost_vllm.families.nemotron_h import NemotronHFamily
from ghost_vllm.families.zamba2 import Zamba2Family

__all__ = ["Family", "FAMILIES", "family_for_config", "model_family", "family_by_name", "supported_summary",
           "GHOST_ARCHITECTURES"]

FAMILIES: dict[str, Family] = {f.name: f for f in (Mamba2Family(), NemotronHFamily(), GraniteHybridFamily(),
                                                   FalconH1Family(), Zamba2Family())}
_BY_MODEL_TYPE = {mt: f for f in FAMILIES.values() for mt in f.model_types}
GHOST_ARCHITECTURES = {f.ghost_architecture: f for f in FAMILIES.values()}


def supported_summary() -> str:
    return ("Mamba2 (Mamba2ForCausalLM), Nemotron-H (NemotronHForCausalLM), Granite-4.0-H "
            "(GraniteMoeHybridForCausalLM), Falcon-H1 (FalconH1ForCausalLM), Zamba2 (Zamba2ForCausalLM)")


def family_for_config(cfg: Mapping[str, Any] | Any, where: str = "config.json") -> Family:
    """The family of a ``config.json`` dict or config object, or :class:`ModelError` naming the supported ones."""
    model_type = cfg_get(cfg, "model_type")
    family = _BY_MODEL_TYPE.get(str(model_type))
    if family is None:
        arch = (cfg_get(cfg, "architectures") or ["?"])[0]
        raise ModelError(f"{where}: model_type is {model_type!r} ({arch}), not a supported family; ghost_vllm prunes the Mamba2 "
                         f"mixers of {supported_summary()}")
    return family


def model_family(cfg: Mapping[str, Any], where: str = "config.json") -> Family:
    """The family of a config dict, its Mamba layers and mixer layout checked (:class:`ModelError` naming the
    supported families, or the config key that is wrong)."""
    family = family_for_config(cfg, where)
    try:
        family.layout(cfg)
        if not family.mamba_layers(cfg):
            raise ValueError("no Mamba2 layer in the layer pattern")
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{where}: not a valid {family.hf_architectures[0]} config ({e}); restore the original "
                         f"config.json") from None
    return family


def family_by_name(name: str) -> Family:
    return FAMILIES[name]
