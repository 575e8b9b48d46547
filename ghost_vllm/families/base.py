"""The one typed interface between the family-agnostic pipeline and a model family.

A family says, from a ``config.json`` dict (or a transformers config object — both are read through :func:`cfg_get`):
which layers hold a Mamba2 mixer, that mixer's :class:`~ghost_vllm.mamba.layout.InProjLayout`, the config key that
holds d_state, the on-disk tensor names of each mixer, and the classes that serve it (transformers, vLLM, the ghost
architecture the plugin registers). On a built transformers model it says where the decoder blocks and the mixers are
and what the mixer does to its input before the scan (multipliers). Nothing else in the pipeline asks which family it
is pruning; a new family is one module registered in :mod:`ghost_vllm.families`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Optional, Sequence

import torch

from ghost_vllm.ghost_format import config_state_ranks
from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["Family", "cfg_get", "layer_kinds"]


def cfg_get(cfg: Mapping[str, Any] | Any, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present in a config dict or object (released configs use older aliases)."""
    for k in keys:
        v = cfg.get(k) if isinstance(cfg, Mapping) else getattr(cfg, k, None)
        if v is not None:
            return v
    return default


def layer_kinds(cfg: Mapping[str, Any] | Any, keys: Sequence[str], pattern_key: Optional[str] = None) -> list[str]:
    """Per-layer kinds, normalised to ``mamba`` / ``attention`` / ``mlp`` / ``moe`` / ``hybrid``, from a list key
    (transformers 5 writes ``linear_attention`` for Mamba layers and ``full_attention`` for attention) or a
    Nemotron-H pattern string (M, *, -, E)."""
    names = {"linear_attention": "mamba", "mamba": "mamba", "full_attention": "attention", "attention": "attention",
             "mlp": "mlp", "moe": "moe", "hybrid": "hybrid", "M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    raw = cfg_get(cfg, *keys)
    if raw is None and pattern_key is not None:
        raw = cfg_get(cfg, pattern_key)
        raw = list(raw) if isinstance(raw, str) else raw
    if not isinstance(raw, (list, tuple)):
        raise KeyError(f"none of {', '.join(keys)} in the config")
    unknown = sorted({str(k) for k in raw} - set(names))
    if unknown:
        raise ValueError(f"unknown layer type {unknown[0]!r}")
    return [names[k] for k in raw]


class Family(ABC):
    """What differs between Mamba2-bearing model families. Subclasses set the class attributes and the abstract
    methods; everything here is read-only and cheap (no weights)."""

    name: ClassVar[str]  # our name: "mamba2", "nemotron_h", …
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values
    hf_architectures: ClassVar[tuple[str, ...]]  # the family's own architecture names
    ghost_architecture: ClassVar[str]  # what a ghost checkpoint's config.json says; the plugin registers it
    vllm_model: ClassVar[str]  # "module:Class" of the stock vLLM model the ghost class subclasses
    # the plugin's classes for the ghost architecture, lazy "module:Class" strings (registered in every vLLM process):
    # the model, and its MODELS_CONFIG_MAP entry (validates the checkpoint in the front-end process)
    ghost_vllm_model: ClassVar[str]
    ghost_vllm_config: ClassVar[str] = "ghost_vllm.plugin.configs:GhostHybridConfig"
    state_key: ClassVar[str]  # the config key holding d_state
    kind_keys: ClassVar[tuple[str, ...]] = ()  # config keys listing each layer's kind (see :func:`layer_kinds`)
    pattern_key: ClassVar[Optional[str]] = None  # or a pattern string of M / * / - / E
    per_layer_budgets: ClassVar[bool] = False  # served with per-layer N'_l (needs a model class that builds them)
    int8_state: ClassVar[bool] = False  # the plugin's int8 SSM-state cache (ghost_vllm.plugin.int8_mixer)
    supports_backward_scoring: ClassVar[bool] = False  # methods that differentiate through our reference mixer
    # method balanced: the state projection (ghost_vllm.mamba.projection) — pruned, written, loaded and evaluated
    # (transformers side); and served by the plugin's vLLM model (ghost_vllm.plugin.projected)
    projected_state: ClassVar[bool] = False
    projected_state_served: ClassVar[bool] = False
    supports_refit: ClassVar[bool] = True  # the readout refit (ghost_vllm.refit) through refit_residual/_scale

    # config level ----------------------------------------------------------------------------------------------
    @abstractmethod
    def layout(self, cfg: Mapping[str, Any] | Any) -> InProjLayout:
        """The Mamba2 mixer layout (every mixer of the model has it, at the config's d_state)."""

    def kinds(self, cfg: Mapping[str, Any] | Any) -> list[str]:
        """Each layer's kind from :attr:`kind_keys` / :attr:`pattern_key` (families with per-layer kinds)."""
        return layer_kinds(cfg, self.kind_keys, self.pattern_key)

    def mamba_layers(self, cfg: Mapping[str, Any] | Any) -> list[int]:
        """Indices of the decoder layers that hold a Mamba2 mixer (default: the layers of kind ``mamba``)."""
        return [i for i, k in enumerate(self.kinds(cfg)) if k == "mamba"]

    def attention_layers(self, cfg: Mapping[str, Any] | Any) -> list[int]:
        """Indices of the decoder layers that hold an attention KV cache in vLLM (one cache per index; default: the
        layers of kind ``attention``)."""
        return [i for i, k in enumerate(self.kinds(cfg)) if k == "attention"] if self.kind_keys else []

    def attention_kv(self, cfg: Mapping[str, Any] | Any) -> tuple[int, int]:
        """(num_key_value_heads, head_size) of each attention layer."""
        raise NotImplementedError(f"{self.name} has no attention layers")

    @abstractmethod
    def mixer_prefixes(self, cfg: Mapping[str, Any] | Any, layer: int) -> tuple[str, ...]:
        """On-disk tensor-name prefixes of layer ``layer``'s mixer (first that exists wins)."""

    def state_size(self, cfg: Mapping[str, Any] | Any) -> int:
        return int(cfg_get(cfg, self.state_key))

    def state_sizes(self, cfg: Mapping[str, Any] | Any, where: str = "config.json") -> list[int]:
        """N of every Mamba layer, in :meth:`mamba_layers` order (uniform unless the family has per-layer budgets)."""
        return [self.state_size(cfg)] * len(self.mamba_layers(cfg))

    def state_ranks(self, cfg: Mapping[str, Any] | Any, where: str = "config.json") -> Optional[list[int]]:
        """r_l of every Mamba layer of a projected checkpoint (``ghost_state_ranks``), or None."""
        return config_state_ranks(cfg, where, len(self.mamba_layers(cfg)), self.state_size(cfg))

    def num_layers(self, cfg: Mapping[str, Any] | Any) -> int:
        return int(cfg_get(cfg, "num_hidden_layers"))

    def set_state_size(self, config: Any, n: int) -> None:
        """Write N' into a transformers config object (and every alias the family's config keeps)."""
        setattr(config, self.state_key, int(n))

    def default_ssm_cache_dtype(self, cfg: Mapping[str, Any] | Any) -> Optional[str]:
        """The SSM-state dtype vLLM picks with ``--mamba-ssm-cache-dtype auto`` (None: the model dtype)."""
        return None

    def check_config(self, cfg: Mapping[str, Any], where: str) -> None:
        """Config checks beyond :meth:`layout` (``ModelError`` naming the key); default: none."""

    def check_tensors(self, shapes: Mapping[str, Any], where: Any) -> None:
        """Checks of the non-mixer tensors a checkpoint must hold (name → (shape, dtype)); default: none."""

    # weights ------------------------------------------------------------------------------------------------------
    def load(self, model_dir: Any, cfg: Mapping[str, Any], dtype: str, device: str):
        """The family's transformers model from a validated Hugging Face directory, in eval mode, ready to compute
        like the engine (:meth:`prepare_model`). Default: the family's own class through ``from_pretrained``
        (safetensors only, never remote code)."""
        from ghost_vllm.weights import attach_saved_projections, load_transformers_model

        ranks = self.state_ranks(cfg, f"{model_dir}/config.json")
        model = load_transformers_model(model_dir, dtype, device, projected=ranks is not None)
        if ranks is not None:  # transformers' class has no projection tensors: read and attach them
            attach_saved_projections(model_dir, [self.mixer(b) for b in self.blocks(model) if self.mixer(b) is not None],
                                     [self.mixer_prefixes(cfg, i) for i in self.mamba_layers(cfg)], ranks)
        self.prepare_model(model)
        return model

    # built transformers model ------------------------------------------------------------------------------------
    @abstractmethod
    def blocks(self, model) -> Sequence[torch.nn.Module]:
        """The decoder blocks in execution order (what the sequential pipeline steps through)."""

    @abstractmethod
    def mixer(self, block: torch.nn.Module) -> Optional[torch.nn.Module]:
        """The block's Mamba2 mixer, or None for a block without one."""

    def embeddings(self, model) -> Optional[torch.nn.Module]:
        """The token embedding whose output is the first block's input, when nothing happens in between (then the
        pipeline skips the capture forward); None makes the pipeline capture block inputs with a dense forward."""
        return None

    def input_scale(self, mixer: torch.nn.Module) -> float:
        """What the mixer multiplies its input by before ``in_proj`` (Falcon-H1's ``ssm_in_multiplier``)."""
        return 1.0

    def in_proj_scale(self, mixer: torch.nn.Module) -> Optional[torch.Tensor]:
        """Per-row multipliers applied to ``in_proj``'s output (Falcon-H1's µP vector), ``[rows]`` or None."""
        return None

    def refit_residual(self, block: torch.nn.Module) -> Optional[torch.nn.Module]:
        """The module whose first input is the residual stream right after the mixer's output was added to it (the
        readout refit's target depth); None when that is the block's own output (nothing follows the mixer)."""
        return None

    def mixer_output_scale(self, block: torch.nn.Module) -> float:
        """What the block multiplies ``out_proj``'s output by before adding it to the residual stream."""
        return 1.0

    def after_resize(self, mixer: torch.nn.Module, rows: Optional[torch.Tensor], n: int) -> None:
        """Fix family-specific buffers after the mixer's in_proj/conv1d were resized to ``n`` (``rows``: the kept
        in_proj rows, None when the mixer was only reshaped)."""

    def prepare_model(self, model) -> None:
        """Anything a loaded transformers model needs before it computes like the serving engine (e.g. group-wise
        gated norm)."""
