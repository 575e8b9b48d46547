"""What the planner needs to know about a model, from its ``config.json`` alone (no weights are read): the Mamba2
shape, the state size of every layer, and — for a ghost checkpoint — what it was pruned from.

MODEL is one of: a bundled real config (``mamba2-130m`` … ``mamba2-2.7b``, ``Mamba-Codestral-7B``), ``reference``
(the bundled model), a local directory (HF or mamba_ssm layout, dense or ghost), or a Hugging Face Hub id (its
``config.json`` only, through the local HF cache)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ghost_vllm.errors import ModelError

__all__ = ["PlanModel", "resolve_plan_model", "plan_model_from_config", "bundled_names", "weight_parameters"]

_MAMBA2_ARCHS = {"Mamba2ForCausalLM", "GhostMamba2ForCausalLM"}


@dataclass(frozen=True)
class PlanModel:
    name: str  # as given
    config: dict[str, Any]  # HF Mamba2 config keys (hidden_size, num_heads, head_dim, n_groups, conv_kernel, …)
    state_sizes: tuple[int, ...]  # N_l of every layer, as the checkpoint stands
    original_state_size: int  # N before pruning (= state_size for a dense model)
    method: Optional[str]  # ghost checkpoints: the pruning method; None for a dense model
    allocation: Optional[str]  # ghost checkpoints: uniform | adaptive | explicit
    origin: Optional[str]  # 'reference' / 'recall': a bundled model or pruned from it (measured quality may exist)
    refit: bool = False  # ghost checkpoints: out_proj re-solved after truncation
    hybrid: bool = False  # attention + Mamba layers (Nemotron-H, Granite-4.0-H, Falcon-H1, Zamba2): vLLM's hybrid pages
    calibration: Optional[dict[str, Any]] = None  # ghost checkpoints: the calibration spec ghost.json records
    state_ranks: Optional[tuple[int, ...]] = None  # a projected state (method balanced): r_l of every layer

    @property
    def pruned(self) -> bool:
        return self.method is not None

    @property
    def config_dtype(self) -> str:
        return str(self.config.get("torch_dtype") or self.config.get("dtype") or "float32")

    @property
    def state_dtype(self) -> Optional[str]:
        """The SSM-state dtype the checkpoint asks the plugin for (``ghost_state_dtype``), or None."""
        from ghost_vllm.ghost_format import config_state_dtype

        return config_state_dtype(self.config, f"{self.name}/config.json")


def bundled_names() -> list[str]:
    from ghost_vllm.mamba.mamba_ssm_format import REAL_CONFIGS

    return [*REAL_CONFIGS, "Mamba-Codestral-7B"]


def _bundled() -> dict[str, Path]:
    from ghost_vllm.sources import BUNDLED_MODELS, bundled_model_dir

    return {name: bundled_model_dir(name) for name in BUNDLED_MODELS}


def _origin(path: Path, ghost: Optional[dict[str, Any]]) -> Optional[str]:
    """Which bundled model ``path`` is, or was pruned from (by ghost.json's source sha256)."""
    from ghost_vllm.checkpoint import source_hash

    for name, d in _bundled().items():
        if path.resolve() == d.resolve():
            return name
    sha = ((ghost or {}).get("source") or {}).get("sha256")
    if sha:
        for name, d in _bundled().items():
            if (d / "config.json").is_file() and sha == source_hash(d):
                return name
    return None


def _from_config(name: str, cfg: dict[str, Any], ghost: Optional[dict[str, Any]], origin: Optional[str]) -> PlanModel:
    from ghost_vllm.ghost_format import config_state_ranks, config_state_sizes
    from ghost_vllm.mamba.mamba_ssm_format import hf_config_from_mamba_ssm

    if "d_model" in cfg and "n_layer" in cfg:  # mamba_ssm layout
        cfg = {**hf_config_from_mamba_ssm(cfg), "architectures": ["Mamba2ForCausalLM"]}
    archs = cfg.get("architectures") or []
    hybrid = _hybrid_model(name, cfg, ghost, origin)
    if hybrid is not None:
        return hybrid
    if cfg.get("model_type") not in (None, "mamba2") or (archs and not set(archs) & _MAMBA2_ARCHS):
        what = archs[0] if archs else cfg.get("model_type")
        from ghost_vllm.families import supported_summary

        raise ModelError(f"{name}: architecture {what} is not one ghost-vllm plan covers; it covers {supported_summary()}")
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_heads", "head_dim", "n_groups", "state_size")
               if k not in cfg]
    if missing:
        raise ModelError(f"{name}: config.json lacks {', '.join(missing)}; pass a Hugging Face-format Mamba2 config")
    sizes = tuple(config_state_sizes(cfg, where=f"{name}/config.json"))
    ranks = config_state_ranks(cfg, where=f"{name}/config.json")
    if ghost is not None or ranks is not None:
        ghost = ghost or {}
        return PlanModel(name, cfg, sizes, int(ghost.get("state_size_original", cfg["state_size"])),
                         str(ghost.get("method", "balanced" if ranks else "ghost")),
                         str(ghost.get("allocation", "uniform")), origin, bool(ghost.get("refit")),
                         calibration=ghost.get("calibration") or {}, state_ranks=tuple(ranks) if ranks else None)
    if len(set(sizes)) > 1:  # per-layer sizes without ghost.json: pruned by someone, method unknown
        return PlanModel(name, cfg, sizes, int(cfg["state_size"]), "unknown", "explicit", origin)
    return PlanModel(name, cfg, sizes, int(cfg["state_size"]), None, None, origin)


def _hybrid_model(name: str, cfg: dict[str, Any], ghost: Optional[dict[str, Any]],
                  origin: Optional[str]) -> Optional[PlanModel]:
    """A PlanModel for a hybrid family's config (attention and Mamba layers), else None."""
    from ghost_vllm.families import family_for_config

    try:
        family = family_for_config(cfg, f"{name}/config.json")
    except ModelError:
        return None
    if not family.attention_layers(cfg):
        return None
    sizes = tuple(family.state_sizes(cfg, f"{name}/config.json"))
    if family.state_ranks(cfg, f"{name}/config.json") is not None and not family.projected_state_served:
        raise ModelError(f"{name}: a projected state (method balanced) on {family.hf_architectures[0]} is not served "
                         f"by the vLLM plugin yet, so there is no engine capacity to plan; 'ghost-vllm inspect' prices "
                         f"its state and 'ghost-vllm compare' evaluates it")
    if ghost is not None:
        return PlanModel(name, cfg, sizes, int(ghost.get("state_size_original", sizes[0])),
                         str(ghost.get("method", "ghost")), str(ghost.get("allocation", "uniform")), origin,
                         bool(ghost.get("refit")), hybrid=True)
    return PlanModel(name, cfg, sizes, family.state_size(cfg), None, None, origin, hybrid=True)


def plan_model_from_config(name: str, cfg: dict[str, Any]) -> PlanModel:
    """A model from its config dict alone (a running engine's ``hf_config.to_dict()``); ModelError if not Mamba2."""
    return _from_config(name, cfg, None, None)


def resolve_plan_model(name: str) -> PlanModel:
    from ghost_vllm.sources import read_config
    from ghost_vllm.ghost_format import is_ghost_checkpoint, read_ghost_json
    from ghost_vllm.sources import hub_snapshot, is_hub_id
    from ghost_vllm.mamba.mamba_ssm_format import mamba_ssm_config

    if name in bundled_names():
        return _from_config(name, mamba_ssm_config(name), None, None)
    if name in _bundled():
        return _from_config(name, read_config(_bundled()[name]), None, name)
    path = Path(name).expanduser()
    if path.is_dir():
        cfg = read_config(path)
        ghost = read_ghost_json(path) if is_ghost_checkpoint(path) else None
        return _from_config(name, cfg, ghost, _origin(path, ghost))
    if is_hub_id(name):
        snap = hub_snapshot(name, patterns=("config.json",), flag="MODEL", what="model directory or bundled name")
        try:
            cfg = json.loads((snap / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{name}: the Hub snapshot has no readable config.json ({e})") from None
        return _from_config(name, cfg, None, None)
    raise ModelError(f"{name}: unknown model; pass a checkpoint directory, a Hub id (org/name), 'reference', 'recall' or a "
                     f"bundled config ({', '.join(bundled_names())})")


def weight_parameters(cfg: dict[str, Any], state_sizes: tuple[int, ...], vocab_multiple: int = 1) -> int:
    """Parameters of a ``Mamba2ForCausalLM`` with these per-layer state sizes (tied embeddings counted once; the vocab
    rounded up to ``vocab_multiple`` — vLLM pads its embedding and LM head to 64 rows)."""
    d, H, P, G = (int(cfg[k]) for k in ("hidden_size", "num_heads", "head_dim", "n_groups"))
    K = int(cfg.get("conv_kernel", 4))
    I = H * P
    V = -(-int(cfg["vocab_size"]) // vocab_multiple) * vocab_multiple
    bias, conv_bias = bool(cfg.get("use_bias", False)), bool(cfg.get("use_conv_bias", True))
    total = V * d * (1 if cfg.get("tie_word_embeddings", True) else 2) + d  # embedding (+ lm_head) + norm_f
    for n in state_sizes:
        rows = 2 * I + 2 * G * n + H
        conv = I + 2 * G * n
        total += d  # block norm
        total += rows * d + (rows if bias else 0)  # in_proj
        total += conv * K + (conv if conv_bias else 0)  # conv1d
        total += 3 * H + I  # dt_bias, A_log, D, gated norm
        total += d * I + (d if bias else 0)  # out_proj
    return total
