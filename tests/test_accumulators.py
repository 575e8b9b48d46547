"""StateChannelAccumulator with hand-computed numbers, and the GHOST score identity against brute-force ablation."""

import pytest
import torch

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.norm import patch_group_norm
from ghost_vllm.mamba.reference import mixer_ssm_inputs, ssm_scan
from tests.helpers.tiny import tiny_model
from ghost_vllm.scoring import SCORERS, LayerStats
from ghost_vllm.stats.accumulators import StateChannelAccumulator


def test_accumulator_hand_computed():
    # b=1, G=2 groups of 1 head, P=1, N=2
    acc = StateChannelAccumulator(n_groups=2, state_size=2, heads_per_group=1, head_dim=1)
    h = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.5]]]])  # [1, H=2, P=1, N=2]
    c = torch.tensor([[[2.0, 1.0], [0.0, 4.0]]])  # [1, G=2, N=2]
    acc.update(h, c)
    acc.update(h, c)
    m = acc.finalize()
    assert m.n_terms == 2 and m.n_tokens == 2
    torch.testing.assert_close(m.sum_h2c2, torch.tensor([[8.0, 8.0], [0.0, 8.0]], dtype=torch.float64))
    torch.testing.assert_close(m.sum_h2, torch.tensor([[2.0, 8.0], [18.0, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(m.sum_c2, torch.tensor([[8.0, 2.0], [0.0, 32.0]], dtype=torch.float64))
    ghost = SCORERS["ghost"](LayerStats(0, torch.zeros(2, 2, 1), torch.zeros(2, 2, 1), m))
    torch.testing.assert_close(ghost, torch.tensor([[2.0, 2.0], [0.0, 2.0]], dtype=torch.float64))


def test_finalize_without_updates_fails():
    with pytest.raises(RuntimeError, match="before any update"):
        StateChannelAccumulator(1, 2, 1, 1).finalize()


@pytest.mark.parametrize("n_groups", [1, 2])
def test_score_identity_against_brute_force_ablation(n_groups):
    """S² · Z == Σ (Δy)² when channel (g, n) alone is zeroed; Δy from transformers' chunked scan (independent)."""
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    model = tiny_model(n_groups=n_groups, state_size=8)
    patch_group_norm(model)
    layout = InProjLayout.from_config(model.config)
    mixer = model.backbone.layers[0].mixer
    x = torch.randn(3, 21, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        s = mixer_ssm_inputs(mixer, layout, x)
        acc = StateChannelAccumulator(layout.n_groups, layout.state_size, layout.heads_per_group, layout.head_dim)
        ssm_scan(s.x, s.dt, s.A, s.B, s.C, s.D, on_step=acc.update)
        m = acc.finalize()
        score = SCORERS["ghost"](LayerStats(0, torch.zeros(1), torch.zeros(1), m))
        base = mamba2_chunk_scan(s.x, s.dt, s.A, s.B, s.C, chunk_size=8, D=s.D).double()
        for g in range(layout.n_groups):
            for n in range(layout.state_size):
                B, C = s.B.clone(), s.C.clone()
                B[:, :, g, n] = 0
                C[:, :, g, n] = 0
                ablated = mamba2_chunk_scan(s.x, s.dt, s.A, B, C, chunk_size=8, D=s.D).double()
                brute = (base - ablated).pow(2).sum().item()
                assert score[g, n].item() ** 2 * m.n_terms == pytest.approx(brute, rel=2e-4, abs=1e-9)
    assert m.n_terms == 3 * 21 * layout.heads_per_group * layout.head_dim
    assert (score > 0).all()
