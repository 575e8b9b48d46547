"""Read checkpoints in the mamba_ssm layout (``state-spaces/mamba2-*``) and convert them to the Hugging Face layout.

mamba_ssm ``config.json``: ``d_model, n_layer, vocab_size, ssm_cfg {layer: Mamba2, d_state, headdim, ngroups, expand,
d_conv, chunk_size, …}, rms_norm, residual_in_fp32, pad_vocab_size_multiple, tie_embeddings``; weights in
``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, never a full unpickle) or safetensors, keys
``backbone.embedding.weight``, ``backbone.layers.{i}.mixer.*``, ``backbone.layers.{i}.norm.weight``,
``backbone.norm_f.weight``, ``lm_head.weight``. Missing ``ssm_cfg`` keys take mamba_ssm's ``Mamba2`` defaults.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ghost_vllm.errors import ModelError

__all__ = ["MAMBA_SSM_DEFAULTS", "REAL_CONFIGS", "CODESTRAL_7B", "is_mamba_ssm_config", "is_mamba_ssm_dir", "hf_config_from_mamba_ssm",
           "load_mamba_ssm_state_dict", "load_mamba_ssm_model", "convert_mamba_ssm_dir",
           "mamba_ssm_config", "codestral_like_config", "save_random_mamba_ssm_checkpoint"]

# mamba_ssm.modules.mamba2.Mamba2.__init__ defaults, and the block/norm epsilon of mixer_seq_simple
MAMBA_SSM_DEFAULTS = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 256,
                      "bias": False, "conv_bias": True, "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4,
                      "dt_limit": (0.0, float("inf")), "d_ssm": None, "norm_before_gate": False, "rmsnorm": True}
NORM_EPS = 1e-5


def is_mamba_ssm_config(cfg: Any) -> bool:
    """A state-spaces (mamba_ssm) ``config.json`` dict rather than a Hugging Face one."""
    return isinstance(cfg, dict) and "d_model" in cfg and "n_layer" in cfg


def is_mamba_ssm_dir(model_dir: Path) -> bool:
    p = model_dir / "config.json"
    if not p.is_file():
        return False
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return is_mamba_ssm_config(cfg)


def hf_config_from_mamba_ssm(cfg: dict[str, Any]) -> dict[str, Any]:
    """mamba_ssm config dict → ``transformers.Mamba2Config`` kwargs (a Hugging Face ``config.json`` dict, with its
    ``model_type`` — the one place a mamba_ssm config becomes a Mamba2 one)."""
    ssm = {**MAMBA_SSM_DEFAULTS, **(cfg.get("ssm_cfg") or {})}
    if ssm.get("layer", "Mamba2") != "Mamba2":
        raise ModelError(f"ssm_cfg.layer is {ssm.get('layer')!r}; only Mamba2 checkpoints are supported")
    if cfg.get("attn_layer_idx") or int(cfg.get("d_intermediate", 0) or 0) > 0:
        raise ModelError("hybrid checkpoints (attention layers or MLPs, attn_layer_idx/d_intermediate) are not supported")
    if not ssm.get("rmsnorm", True) or ssm.get("norm_before_gate", False):
        raise ModelError("only rmsnorm=True, norm_before_gate=False Mamba2 mixers are supported (the released ones)")
    d_model, expand, headdim = int(cfg["d_model"]), int(ssm["expand"]), int(ssm["headdim"])
    d_ssm = ssm.get("d_ssm") or expand * d_model
    if d_ssm != expand * d_model:
        raise ModelError(f"d_ssm {d_ssm} != expand·d_model {expand * d_model}: not expressible as a HF Mamba2 config")
    pad = int(cfg.get("pad_vocab_size_multiple", 1) or 1)
    vocab = int(math.ceil(int(cfg["vocab_size"]) / pad) * pad)
    lo, hi = ssm["dt_limit"]
    return {
        "vocab_size": vocab, "hidden_size": d_model, "num_hidden_layers": int(cfg["n_layer"]),
        "state_size": int(ssm["d_state"]), "head_dim": headdim, "num_heads": d_ssm // headdim,
        "n_groups": int(ssm["ngroups"]), "expand": expand, "conv_kernel": int(ssm["d_conv"]),
        "chunk_size": int(ssm["chunk_size"]), "use_bias": bool(ssm["bias"]), "use_conv_bias": bool(ssm["conv_bias"]),
        "layer_norm_epsilon": NORM_EPS, "residual_in_fp32": bool(cfg.get("residual_in_fp32", True)),
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", True)), "time_step_min": float(ssm["dt_min"]),
        "time_step_max": float(ssm["dt_max"]), "time_step_floor": float(ssm["dt_init_floor"]),
        "time_step_limit": (float(lo), float(hi)), "rms_norm": True, "norm_before_gate": False,
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1, "model_type": "mamba2",
    }


def load_mamba_ssm_state_dict(model_dir: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Weights of a mamba_ssm directory: safetensors if present (read tensor by tensor, see
    :func:`ghost_vllm.weights.read_safetensors`), else ``pytorch_model.bin`` with ``weights_only=True``, which refuses
    anything but tensors and plain containers. Every tensor gets its own storage, not a view of one memory-mapped
    file: pruning replaces in_proj/conv1d, and a mapping would keep the replaced pages resident until the end."""
    from ghost_vllm.weights import read_safetensors

    st = sorted(model_dir.glob("*.safetensors"))
    if st:
        out: dict[str, torch.Tensor] = {}
        for f in st:
            out.update(read_safetensors(f, dtype))
        return out
    binf = model_dir / "pytorch_model.bin"
    if not binf.is_file():
        raise ModelError(f"{model_dir}: no pytorch_model.bin or *.safetensors")
    try:
        sd = torch.load(binf, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything that would run code
        raise ModelError(f"{binf}: refused to load ({type(e).__name__}: {str(e).splitlines()[0][:160]}); only plain "
                         f"tensor checkpoints are read, never arbitrary pickles") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{binf}: not a state dict of tensors")
    return sd


def _hf_names(sd: dict[str, torch.Tensor], hf: dict[str, Any], where: Path) -> dict[str, torch.Tensor]:
    """mamba_ssm keys → HF Mamba2 keys (no copies); the embedding must have the padded vocabulary's rows."""
    out = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}
    emb = out.get("backbone.embeddings.weight")
    if emb is None:
        raise ModelError(f"{where}: no backbone.embedding.weight")
    if emb.shape[0] != hf["vocab_size"]:
        raise ModelError(f"{where}: embedding has {emb.shape[0]} rows, padded vocab_size is {hf['vocab_size']}")
    return out


def _mamba2_config(src: Path):
    """The HF config dict and transformers ``Mamba2Config`` of a mamba_ssm directory."""
    from transformers import Mamba2Config

    hf = hf_config_from_mamba_ssm(json.loads((src / "config.json").read_text(encoding="utf-8")))
    return hf, Mamba2Config(**hf, architectures=["Mamba2ForCausalLM"])


def load_mamba_ssm_model(src: Path, dtype: str = "auto", device: str = "cpu"):
    """A ``Mamba2ForCausalLM`` built straight from a mamba_ssm directory: the weights are read once and assigned to
    the module (built on the meta device) without a second copy and without a temporary HF directory; ``dtype``
    converts one tensor at a time (``auto`` keeps the stored one)."""
    from ghost_vllm.weights import TORCH_DTYPES, assemble_mamba2

    hf, config = _mamba2_config(src)
    sd = _hf_names(load_mamba_ssm_state_dict(src, None if dtype == "auto" else TORCH_DTYPES[dtype]), hf, src)
    torch_dtype = sd["backbone.embeddings.weight"].dtype if dtype == "auto" else TORCH_DTYPES[dtype]
    return assemble_mamba2(config, sd, torch_dtype, device, src)


def convert_mamba_ssm_dir(src: Path, dst: Path, tokenizer: str | None = None) -> Path:
    """Write ``src`` (mamba_ssm layout) to ``dst`` in the HF layout (config.json + model.safetensors [+ tokenizer])."""
    import shutil

    from safetensors.torch import save_file
    from transformers import Mamba2ForCausalLM

    from ghost_vllm.weights import check_mamba2_weights

    hf, config = _mamba2_config(src)
    sd = _hf_names(load_mamba_ssm_state_dict(src), hf, src)
    with torch.device("meta"):
        check_mamba2_weights(Mamba2ForCausalLM(config), sd, src)
    dst.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(dst))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    tok_src = Path(tokenizer) if tokenizer else None
    if tok_src is not None and tok_src.is_file():
        shutil.copy(tok_src, dst / "tokenizer.json")
    elif (src / "tokenizer.json").is_file():
        shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    return dst


# the released state-spaces/mamba2-* configs (mamba_ssm layout); ssm_cfg defaults otherwise
REAL_CONFIGS = {
    "mamba2-130m": {"d_model": 768, "n_layer": 24},
    "mamba2-370m": {"d_model": 1024, "n_layer": 48},
    "mamba2-780m": {"d_model": 1536, "n_layer": 48},
    "mamba2-1.3b": {"d_model": 2048, "n_layer": 48},
    "mamba2-2.7b": {"d_model": 2560, "n_layer": 64},
}


# mistralai/Mamba-Codestral-7B-v0.1 (HF Mamba2 config): the grouped-B/C shape our users serve
CODESTRAL_7B = {"d_model": 4096, "n_layer": 64, "vocab_size": 32768, "pad_vocab_size_multiple": 1, "tie_embeddings": False,
                "ssm_cfg": {"layer": "Mamba2", "d_state": 128, "headdim": 64, "ngroups": 8, "chunk_size": 256}}


def codestral_like_config(d_model: int = 512, n_layer: int = 2, vocab_size: int = 32768) -> dict[str, Any]:
    """Codestral-7B's mixer shapes (n_groups 8, d_state 128, headdim 64, expand 2) scaled down in width and depth:
    ``d_model`` must keep ``2·d_model/64`` heads divisible by 8."""
    if (2 * d_model // 64) % 8:
        raise ValueError(f"d_model {d_model}: 2·d_model/64 heads must be a multiple of n_groups 8")
    return mamba_ssm_config("Mamba-Codestral-7B", d_model=d_model, n_layer=n_layer, vocab_size=vocab_size)


def mamba_ssm_config(name: str | None = None, **overrides) -> dict[str, Any]:
    """A mamba_ssm-layout config dict: one of :data:`REAL_CONFIGS`, ``"Mamba-Codestral-7B"`` (:data:`CODESTRAL_7B`)
    or a custom shape, with the released defaults."""
    if name == "Mamba-Codestral-7B":
        shape = {k: v for k, v in CODESTRAL_7B.items() if k != "ssm_cfg"}
        return mamba_ssm_config(**{**shape, **overrides, "ssm_cfg": {**CODESTRAL_7B["ssm_cfg"], **overrides.get("ssm_cfg", {})}})
    base = {"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
            "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
            "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True}
    if name is not None:
        base.update(REAL_CONFIGS[name])
    ssm = {**base["ssm_cfg"], **overrides.pop("ssm_cfg", {})}
    base.update(overrides)
    base["ssm_cfg"] = ssm
    return base


def save_random_mamba_ssm_checkpoint(path: Path, cfg: dict[str, Any], seed: int = 0, fmt: str = "bin",
                                     dtype: torch.dtype = torch.float32) -> Path:
    """Random weights in the mamba_ssm layout (test helper and pruning-cost benchmark input)."""
    hf = hf_config_from_mamba_ssm(cfg)
    g = torch.Generator().manual_seed(seed)
    d, H, P, G, N, K = hf["hidden_size"], hf["num_heads"], hf["head_dim"], hf["n_groups"], hf["state_size"], hf["conv_kernel"]
    I = H * P
    conv_dim = I + 2 * G * N

    def rnd(*shape, scale=0.02):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    sd = {"backbone.embedding.weight": rnd(hf["vocab_size"], d), "backbone.norm_f.weight": (1 + rnd(d, scale=0.1))}
    for i in range(hf["num_hidden_layers"]):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = 1 + rnd(d, scale=0.1)
        sd[p + "mixer.in_proj.weight"] = rnd(2 * I + 2 * G * N + H, d, scale=d ** -0.5)
        sd[p + "mixer.conv1d.weight"] = rnd(conv_dim, 1, K, scale=0.3)
        sd[p + "mixer.conv1d.bias"] = rnd(conv_dim, scale=0.1)
        sd[p + "mixer.dt_bias"] = (torch.rand(H, generator=g) * 2 - 4).to(dtype)
        sd[p + "mixer.A_log"] = torch.log(torch.rand(H, generator=g) * 15 + 1).to(dtype)
        sd[p + "mixer.D"] = 1 + rnd(H, scale=0.1)
        sd[p + "mixer.norm.weight"] = 1 + rnd(I, scale=0.1)
        sd[p + "mixer.out_proj.weight"] = rnd(d, I, scale=I ** -0.5)
    tied = cfg.get("tie_embeddings", True)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"] if tied else rnd(hf["vocab_size"], d)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    if fmt == "bin":
        torch.save(sd, path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous().clone() for k, v in sd.items() if not (tied and k == "lm_head.weight")},
                  str(path / "model.safetensors"))
    return path
