"""Surgery equivalence: pruned model == dense model with the removed channels zeroed (fp32, 1e-5)."""

import pytest
import torch

from ghost_vllm.mamba.layout import InProjLayout
from tests.helpers.tiny import tiny_model
from ghost_vllm.selection import kept_count, select_channels
from ghost_vllm.surgery import prune_mixer, zero_channels


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_pruned_equals_zeroed(n_groups, sparsity):
    pruned = tiny_model(n_groups=n_groups, seed=3)
    zeroed = tiny_model(n_groups=n_groups, seed=3)
    layout = InProjLayout.from_config(pruned.config)
    n_keep = kept_count(layout.state_size, sparsity)
    g = torch.Generator().manual_seed(7)
    for lp, lz in zip(pruned.backbone.layers, zeroed.backbone.layers):
        scores = torch.rand(layout.n_groups, layout.state_size, generator=g)
        keep = select_channels(scores, n_keep)
        removed = torch.stack([
            torch.tensor(sorted(set(range(layout.state_size)) - set(row.tolist()))) for row in keep
        ])
        prune_mixer(lp.mixer, layout, keep)
        zero_channels(lz.mixer, layout, removed)
    pruned.config.state_size = n_keep
    x = torch.randint(0, 96, (2, 37), generator=g)  # 37 tokens > 4 chunks of 8
    with torch.no_grad():
        a = pruned(x).logits
        b = zeroed(x).logits
    assert pruned.backbone.layers[0].mixer.in_proj.weight.shape[0] == layout.with_state_size(n_keep).in_proj_rows
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_pruning_really_changes_the_model():
    dense = tiny_model(seed=3)
    pruned = tiny_model(seed=3)
    layout = InProjLayout.from_config(pruned.config)
    keep = torch.arange(4).view(1, 4)
    for layer in pruned.backbone.layers:
        prune_mixer(layer.mixer, layout, keep)
    x = torch.randint(0, 96, (1, 20))
    with torch.no_grad():
        assert (dense(x).logits - pruned(x).logits).abs().max() > 1e-3


def test_layout_rows_are_the_b_and_c_blocks():
    layout = InProjLayout(hidden_size=4, num_heads=2, head_dim=2, n_groups=2, state_size=3, conv_kernel=4)
    keep = torch.tensor([[0, 2], [1, 2]])
    rows = layout.in_proj_keep_rows(keep).tolist()
    # z,x: 0..7; B block 8..13 (g0: 8,9,10; g1: 11,12,13); C block 14..19; dt 20,21
    assert rows == list(range(8)) + [8, 10, 12, 13] + [14, 16, 18, 19] + [20, 21]
    assert layout.conv_keep_channels(keep).tolist() == list(range(4)) + [4, 6, 8, 9] + [10, 12, 14, 15]
