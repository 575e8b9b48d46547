"""Each method ranks channels the way it should."""

import pytest
import torch

from tests.helpers.tiny import tiny_model
import ghost_vllm
from ghost_vllm.recipe import SelectionSpec
from ghost_vllm.stats.gradients import taylor_mask_grads
from ghost_vllm.selection import kept_count, select_channels
from ghost_vllm.stats.capture import masked_mixers


def _tokens(seed, n=8, T=24, vocab=96):
    return torch.randint(2, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


def _kept(method, tokens, seed=0, n_groups=1, model_seed=0):
    model = tiny_model(seed=model_seed, n_groups=n_groups)
    report = ghost_vllm.prune(model, tokens, SelectionSpec(method, 0.5, seed=seed, allocation="uniform", refit=False), batch_size=4, progress=False).report
    return [layer.kept for layer in report.layers]


def test_magnitude_is_blind_to_the_data():
    assert _kept("magnitude", _tokens(0)) == _kept("magnitude", _tokens(1))


def test_ghost_depends_on_the_data():
    low = torch.full((8, 24), 5)  # one repeated token vs varied text
    assert _kept("ghost", low) != _kept("ghost", _tokens(1))


def test_random_is_reproducible_by_seed():
    t = _tokens(0)
    assert _kept("random", t, seed=3) == _kept("random", t, seed=3)
    assert _kept("random", t, seed=3) != _kept("random", t, seed=4)
    assert _kept("random", t, seed=3) == _kept("random", _tokens(5), seed=3)  # data-blind too


def test_paired_and_unpaired_ghost_differ_somewhere():
    t = _tokens(2, n=16, T=32)
    results = [(_kept("ghost", t, model_seed=s), _kept("ghost_unpaired", t, model_seed=s)) for s in range(3)]
    assert any(a != b for a, b in results)


def test_taylor_needs_backward_and_matches_finite_differences():
    model = tiny_model(seed=4, n_groups=2)
    tokens = _tokens(3, n=2, T=16)
    grads = taylor_mask_grads(model, tokens, batch_size=2, progress=False)
    assert all(p.grad is None for p in model.parameters())  # weights untouched, only the masks get gradients

    def loss_with(layer, g, n, eps):
        masks = [torch.ones(2, 16, dtype=torch.float32) for _ in model.backbone.layers]
        masks[layer][g, n] += eps
        with torch.no_grad(), masked_mixers(model, masks):
            logits = model(tokens, use_cache=False).logits.double()
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="sum"
        ).item()

    eps = 1e-2
    for layer, g, n in [(0, 0, 3), (1, 1, 7), (0, 1, 12)]:
        fd = (loss_with(layer, g, n, eps) - loss_with(layer, g, n, -eps)) / (2 * eps)
        assert grads[layer][g, n].item() == pytest.approx(fd, rel=2e-2, abs=2e-3)


def test_masked_mixers_restores_forwards_and_checks_it_fired():
    model = tiny_model()
    masks = [torch.ones(1, 16) for _ in model.backbone.layers]
    with pytest.raises(RuntimeError, match="never ran"):
        with masked_mixers(model, masks):
            pass
    assert "forward" not in vars(model.backbone.layers[0].mixer)


def test_kept_count_rounding_and_selection():
    assert kept_count(128, 0.5) == 64
    assert kept_count(128, 0.3) == 90
    assert kept_count(128, 0.3, multiple_of=8) == 88
    assert kept_count(128, 0.99, multiple_of=8) == 8
    assert kept_count(16, 0.0) == 16
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert select_channels(scores, 2).tolist() == [[1, 3], [0, 1]]
