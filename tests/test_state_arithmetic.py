"""Our state-size arithmetic equals vLLM's MambaStateShapeCalculator for the real Mamba2 shapes and the tiny ones."""

import math

import pytest

from ghost_vllm.mamba.mamba_ssm_format import REAL_CONFIGS, hf_config_from_mamba_ssm, mamba_ssm_config
from ghost_vllm.state import state_size_of


@pytest.mark.parametrize("name", [*REAL_CONFIGS, "Mamba-Codestral-7B"])
@pytest.mark.parametrize("state_size", [128, 64, 40])
def test_matches_vllm_calculator(name, state_size):
    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator

    hf = hf_config_from_mamba_ssm(mamba_ssm_config(name))
    conv, ssm = MambaStateShapeCalculator.mamba2_state_shape(
        tp_world_size=1, intermediate_size=hf["expand"] * hf["hidden_size"], n_groups=hf["n_groups"],
        num_heads=hf["num_heads"], head_dim=hf["head_dim"], state_size=state_size, conv_kernel=hf["conv_kernel"])
    ours = state_size_of(hf, state_size=state_size, dtype="bfloat16", ssm_dtype="float32")
    L = hf["num_hidden_layers"]
    assert ours.conv_elements == L * math.prod(conv)
    assert ours.ssm_elements == L * math.prod(ssm)
    assert ours.bytes_per_sequence == L * (2 * math.prod(conv) + 4 * math.prod(ssm))
