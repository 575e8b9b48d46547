"""Our pure-torch mixer (sequential scan, group-wise norm) against transformers' Mamba2 mixer."""

import pytest
import torch

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.norm import patch_group_norm
from ghost_vllm.mamba.reference import mixer_forward
from tests.helpers.tiny import tiny_model


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("chunked", [False, True])
def test_reference_mixer_matches_transformers(n_groups, chunked):
    model = tiny_model(n_groups=n_groups)
    patch_group_norm(model)
    layout = InProjLayout.from_config(model.config)
    x = torch.randn(2, 29, model.config.hidden_size, generator=torch.Generator().manual_seed(0))  # > 3 chunks of 8
    mixer = model.backbone.layers[1].mixer
    with torch.no_grad():
        expected = mixer(x)
        got = mixer_forward(mixer, layout, x, chunked=chunked)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_group_norm_patch_changes_only_multi_group_models():
    assert patch_group_norm(tiny_model(n_groups=1)) == 0
    model = tiny_model(n_groups=2)
    x = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        before = model(x).logits
        assert patch_group_norm(model) == 2
        after = model(x).logits
    # transformers normalises over all groups at once; per-group norm is a different function
    assert (before - after).abs().max() > 1e-4
