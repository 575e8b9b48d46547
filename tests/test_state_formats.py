"""SSM-state storage formats of the frontier benchmark: rounding error within each format's bound, bytes, the
scan's store hook (after y_t is read, before step t+1), and the float32 'format' equal to transformers' forward."""

from __future__ import annotations

import pytest
import torch

from ghost_vllm.loadtest.state_formats import FORMATS, stored_state_mixers
from ghost_vllm.mamba.reference import ssm_scan


@pytest.mark.parametrize("name,bound", [("float32", 0.0), ("bfloat16", 2**-8), ("float16", 2**-11),
                                        ("fp8_e4m3", 2**-4), ("int8", 0.5 / 127)])
def test_rounding_error_is_within_the_format(name, bound):
    h = torch.randn(3, 4, 8, 16, generator=torch.Generator().manual_seed(0)) * 3
    x = h.clone()
    FORMATS[name].round_(x)
    if name in ("fp8_e4m3", "int8"):  # relative to each head's amax (per-head scale)
        err = (x - h).abs() / h.abs().amax(dim=(2, 3), keepdim=True)
    else:  # relative to the value
        err = (x - h).abs() / h.abs()
    assert float(err.max()) <= bound * (1 + 1e-6)
    if name != "float32":
        assert not torch.equal(x, h)


def test_bytes_count_elements_and_scales():
    assert FORMATS["float32"].ssm_bytes(8, 64, 128) == 8 * 64 * 128 * 4
    assert FORMATS["bfloat16"].ssm_bytes(8, 64, 64) == 8 * 64 * 64 * 2
    assert FORMATS["int8"].ssm_bytes(8, 64, 128) == 8 * 64 * 128 + 8 * 4
    assert FORMATS["fp8_e4m3"].ssm_bytes(8, 64, 32) == 8 * 64 * 32 + 8 * 4


def test_store_hook_runs_after_the_output_reads_the_state():
    g = torch.Generator().manual_seed(1)
    b, T, H, P, G, N = 2, 5, 2, 3, 1, 4
    x, B, C = torch.randn(b, T, H, P, generator=g), torch.randn(b, T, G, N, generator=g), torch.randn(b, T, G, N, generator=g)
    dt, A, D = torch.rand(b, T, H, generator=g), -torch.rand(H, generator=g), torch.randn(H, generator=g)
    y, _ = ssm_scan(x, dt, A, B, C, D, on_store=lambda h: h.zero_())
    # with the stored state wiped after every step, y_t sees only token t: C_t · (dt_t B_t x_t) + D x_t
    Bh, Ch = B.repeat_interleave(H // G, dim=2), C.repeat_interleave(H // G, dim=2)
    expected = torch.einsum("bthn,bthn->bth", Ch, Bh)[..., None] * dt[..., None] * x + D[:, None] * x
    assert torch.allclose(y, expected, atol=1e-6)


def test_float32_storage_is_transformers_forward():
    from tests.helpers.tiny import tiny_model

    model = tiny_model(seed=4, n_groups=1, num_hidden_layers=2)
    ids = torch.randint(2, 96, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        with stored_state_mixers(model, FORMATS["float32"]):
            ours = model(ids, use_cache=False).logits
        with stored_state_mixers(model, FORMATS["int8"]):
            narrow = model(ids, use_cache=False).logits
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(narrow, ref, atol=1e-6) and torch.allclose(narrow, ref, atol=0.5)
