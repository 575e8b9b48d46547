"""mamba_ssm-layout checkpoints (state-spaces/mamba2-*): conversion to the HF layout checked against an
independent implementation of that layout written here (pure torch, sequential recurrence, raw state-dict keys)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ghost_vllm.cli import main as cli
from ghost_vllm.errors import ModelError
from ghost_vllm.mamba.mamba_ssm_format import (
    REAL_CONFIGS,
    convert_mamba_ssm_dir,
    hf_config_from_mamba_ssm,
    mamba_ssm_config,
    save_random_mamba_ssm_checkpoint,
)
from tests.helpers.pickles import write_malicious_pickle


def reference_logits(sd: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """mamba_ssm Mamba2 LM forward from its own keys and config, one token at a time."""
    ssm = cfg["ssm_cfg"]
    d, N, P, G, K = cfg["d_model"], ssm.get("d_state", 128), ssm.get("headdim", 64), ssm.get("ngroups", 1), ssm.get("d_conv", 4)
    I = ssm.get("expand", 2) * d
    H = I // P
    eps = 1e-5

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    x = sd["backbone.embedding.weight"][ids[0]].double()  # [T, d]
    T = x.shape[0]
    resid = torch.zeros_like(x)
    for i in range(cfg["n_layer"]):
        p = f"backbone.layers.{i}.mixer."
        resid = resid + x
        h_in = rms(resid, sd[f"backbone.layers.{i}.norm.weight"].double())
        zxbcdt = h_in @ sd[p + "in_proj.weight"].double().T
        z, xbc, dt = zxbcdt[:, :I], zxbcdt[:, I : 2 * I + 2 * G * N], zxbcdt[:, 2 * I + 2 * G * N :]
        w, b = sd[p + "conv1d.weight"].double()[:, 0], sd[p + "conv1d.bias"].double()
        padded = torch.cat([torch.zeros(K - 1, xbc.shape[1], dtype=xbc.dtype), xbc])
        conv = torch.stack([(padded[t : t + K] * w.T).sum(0) + b for t in range(T)])
        conv = conv * torch.sigmoid(conv)
        xs, B, C = conv[:, :I].view(T, H, P), conv[:, I : I + G * N].view(T, G, N), conv[:, I + G * N :].view(T, G, N)
        dt = F.softplus(dt + sd[p + "dt_bias"].double())
        A = -torch.exp(sd[p + "A_log"].double())
        D = sd[p + "D"].double()
        state = torch.zeros(H, P, N, dtype=torch.float64)
        ys = []
        for t in range(T):
            for k in range(H):
                g = k // (H // G)
                state[k] = math.exp(dt[t, k] * A[k]) * state[k] + dt[t, k] * torch.outer(xs[t, k], B[t, g])
            ys.append(torch.stack([state[k] @ C[t, k // (H // G)] + D[k] * xs[t, k] for k in range(H)]).reshape(I))
        y = torch.stack(ys) * F.silu(z)
        y = y.view(T, G, I // G)
        y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).reshape(T, I) * sd[p + "norm.weight"].double()
        x = y @ sd[p + "out_proj.weight"].double().T
    resid = resid + x
    out = rms(resid, sd["backbone.norm_f.weight"].double())
    return out @ sd.get("lm_head.weight", sd["backbone.embedding.weight"]).double().T


@pytest.mark.parametrize("ngroups, fmt", [(1, "bin"), (2, "safetensors")])
def test_converted_checkpoint_matches_independent_reference(tmp_path, ngroups, fmt):
    from transformers import Mamba2ForCausalLM

    from ghost_vllm.mamba.norm import patch_group_norm

    cfg = mamba_ssm_config(d_model=32, n_layer=2, vocab_size=90, pad_vocab_size_multiple=16,
                           ssm_cfg={"d_state": 8, "headdim": 8, "ngroups": ngroups, "chunk_size": 8})
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, seed=ngroups, fmt=fmt)
    dst = convert_mamba_ssm_dir(src, tmp_path / "hf")
    model = Mamba2ForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    patch_group_norm(model)
    assert model.config.vocab_size == 96  # 90 padded to a multiple of 16
    ids = torch.randint(0, 90, (1, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(ids).logits[0].double()
    if fmt == "bin":
        sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    else:
        from safetensors.torch import load_file

        sd = load_file(str(src / "model.safetensors"))
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    torch.testing.assert_close(got, reference_logits(sd, cfg, ids), atol=2e-4, rtol=1e-4)


def test_real_shapes_map_exactly():
    for name, shape in REAL_CONFIGS.items():
        hf = hf_config_from_mamba_ssm(mamba_ssm_config(name))
        assert hf["hidden_size"] == shape["d_model"] and hf["num_hidden_layers"] == shape["n_layer"]
        assert hf["state_size"] == 128 and hf["head_dim"] == 64 and hf["n_groups"] == 1
        assert hf["num_heads"] == 2 * shape["d_model"] // 64 and hf["vocab_size"] == 50288
        assert hf["conv_kernel"] == 4 and hf["layer_norm_epsilon"] == 1e-5


def test_hybrid_and_unsupported_configs_are_refused():
    with pytest.raises(ModelError, match="hybrid"):
        hf_config_from_mamba_ssm(mamba_ssm_config(attn_layer_idx=[3]))
    with pytest.raises(ModelError, match="only Mamba2"):
        hf_config_from_mamba_ssm(mamba_ssm_config(ssm_cfg={"layer": "Mamba1"}))


def test_prune_accepts_the_mamba_ssm_layout(tmp_path, capsys):
    from tests.helpers.tiny import tiny_tokenizer
    from ghost_vllm.reference import CALIBRATION_TEXT

    tok = tiny_tokenizer()
    tok_file = tmp_path / "tok"
    tok.save_pretrained(str(tok_file))
    cfg = mamba_ssm_config(d_model=32, n_layer=2, vocab_size=len(tok), ssm_cfg={"d_state": 16, "headdim": 8, "chunk_size": 8})
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, fmt="bin")
    out = tmp_path / "pruned"
    base = ["prune", "--model", str(src), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "4", "--seq-len", "16",
            "--out", str(out), "--no-progress", "--allocation", "uniform"]
    assert cli(base) == 2 and not out.exists()  # no tokenizer in a state-spaces directory: a clear error
    err = capsys.readouterr().err
    assert "no tokenizer" in err and "--tokenizer" in err
    assert cli([*base, "--tokenizer", str(tok_file / "tokenizer.json")]) == 0
    ghost = json.loads((out / "ghost.json").read_text())
    assert ghost["state_size_original"] == 16 and ghost["state_size"] == 8
    assert ghost["source"]["path"] == str(src.resolve()) and len(ghost["source"]["sha256"]) == 64
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GhostMamba2ForCausalLM"]


def test_malicious_pickle_in_mamba_ssm_layout_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(mamba_ssm_config(d_model=32, n_layer=1)))
    write_malicious_pickle(src / "pytorch_model.bin", "backbone.embedding.weight", marker)
    with pytest.raises(ModelError, match="refused to load"):
        convert_mamba_ssm_dir(src, tmp_path / "hf")
    assert not marker.exists()
