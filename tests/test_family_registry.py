"""The model-family registry is the one list: every family in ``FAMILIES`` has each part the pipeline and the engine
need — a tiny model for the tests, its transformers class, page arithmetic, and the plugin's ghost classes, which
vLLM registers — so a family added to the registry without one of them fails here, and the plugin cannot miss one."""

from __future__ import annotations

import importlib

import pytest

from ghost_vllm.families import FAMILIES


def _tiny_config(family) -> dict:
    if family.name == "mamba2":
        from tests.helpers.tiny import tiny_config

        return {**tiny_config().to_dict(), "model_type": "mamba2"}
    from tests.helpers.tiny_hybrids import TINY_FAMILIES

    assert family.model_types[0] in TINY_FAMILIES, f"{family.name}: no tiny model in tests/helpers/tiny_hybrids.py"
    return TINY_FAMILIES[family.model_types[0]](320, 16).to_dict()


def _resolve(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_every_part(name):
    import transformers

    from ghost_vllm.families import family_for_config
    from ghost_vllm.plugin import ARCHITECTURES
    from ghost_vllm.state import state_size_of

    family = FAMILIES[name]
    cfg = _tiny_config(family)
    assert family_for_config(cfg) is family  # looked up by model_type
    assert any(hasattr(transformers, a) for a in family.hf_architectures), family.hf_architectures
    layout = family.layout(cfg)
    state = state_size_of(cfg)
    assert state.layers == len(family.mamba_layers(cfg)) > 0
    assert state.bytes_per_sequence == state.layers * sum(layout.state_elements()) * 4
    assert ARCHITECTURES[family.ghost_architecture] == (family.ghost_vllm_model, family.ghost_vllm_config)


@pytest.mark.vllm
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_served_by_the_plugin(name):
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from ghost_vllm.plugin import register

    family = FAMILIES[name]
    register()
    assert family.ghost_architecture in ModelRegistry.get_supported_archs()
    model_cls, stock = _resolve(family.ghost_vllm_model), _resolve(family.vllm_model)
    assert issubclass(model_cls, stock)  # the stock vLLM model, subclassed
    assert MODELS_CONFIG_MAP[family.ghost_architecture] is _resolve(family.ghost_vllm_config)
