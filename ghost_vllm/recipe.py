"""Pruning recipes: YAML (``yaml.safe_load``) → frozen, validated dataclasses. Strict on keys, types and ranges.

A recipe has four sections; every field has a default, so ``load_recipe(None)`` plus flags is a full recipe::

    model:       {path: reference, tokenizer: null, dtype: auto, device: auto}
    calibration: {source: reference, nsamples: 128, seq_len: 128, seed: 0, batch_size: 8}
    selection:   {method: ghost, sparsity: 0.5, multiple_of: 1, seed: 0, allocation: auto, state_sizes: null, refit: true,
                  min_state_size: null}
    output:      {dir: null, overwrite: false}

``reference`` names the bundled reference model (as ``model.path``) and its held-out text (as ``calibration.source``).

The default selection is the recipe that measured best (``benchmarks/results/recipes``): per-layer budgets where the
family's engine serves them (``allocation: auto`` = adaptive for pure Mamba2, uniform for hybrids) and the readout
refit. ``allocation: uniform`` and ``refit: false`` give the paper's GHOST.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ghost_vllm.errors import RecipeError
from ghost_vllm.units import plugin_state_dtypes

__all__ = [
    "ModelSpec",
    "CalibrationSpec",
    "SelectionSpec",
    "OutputSpec",
    "Recipe",
    "METHODS",
    "load_recipe",
    "build_recipe",
]

# the channel scorers (ghost_vllm.scoring) and the projections (ghost_vllm.reduce: "balanced")
METHODS = ("ghost", "ghost_unpaired", "magnitude", "random", "taylor", "balanced")
ALLOCATIONS = ("auto", "uniform", "adaptive", "hankel")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelSpec:
    path: str = "reference"
    tokenizer: Optional[str] = None
    dtype: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class CalibrationSpec:
    source: str = "reference"
    nsamples: int = 128
    seq_len: int = 128
    seed: int = 0
    batch_size: int = 8


@dataclass(frozen=True)
class SelectionSpec:
    method: str = "ghost"
    sparsity: float = 0.5
    multiple_of: int = 1
    seed: int = 0
    # auto: per-layer sizes where the family's engine serves them (pure Mamba2: adaptive, or hankel for balanced), else
    # uniform; uniform: N' in every layer; adaptive: per-layer N'_l at the uniform cut's bytes from the mask Fisher;
    # hankel (balanced only): per-layer ranks r_l from the dense model's Hankel singular values, same bytes
    allocation: str = "auto"
    state_sizes: Optional[list[int]] = None  # explicit N'_l per layer (sparsity and allocation then unused)
    min_state_size: Optional[int] = None  # adaptive: smallest N'_l (default multiple_of)
    refit: bool = True  # re-solve each pruned layer's out_proj on the calibration activations (ghost_vllm/refit.py)


@dataclass(frozen=True)
class OutputSpec:
    dir: Optional[str] = None
    overwrite: bool = False
    state_dtype: Optional[str] = None  # "int8": the checkpoint asks the plugin for an int8 SSM-state cache


@dataclass(frozen=True)
class Recipe:
    model: ModelSpec = field(default_factory=ModelSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    output: OutputSpec = field(default_factory=OutputSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def output_dir(self) -> Path:
        """``output.dir``, or ``<model name>-<method><percent>`` in the working directory."""
        if self.output.dir:
            return Path(self.output.dir)
        name = Path(self.model.path.rstrip("/")).name  # a bundled name is its own last component
        s = self.selection
        if s.state_sizes is not None:
            return Path(f"{name}-{s.method}-layers")
        suffix = "-adaptive" if s.allocation == "adaptive" else ""
        return Path(f"{name}-{s.method}{round(100 * s.sparsity)}{suffix}")


_SECTIONS = {"model": ModelSpec, "calibration": CalibrationSpec, "selection": SelectionSpec, "output": OutputSpec}


def _type_ok(value: Any, annotation: str) -> bool:
    if annotation.startswith("Optional["):
        return value is None or _type_ok(value, annotation[len("Optional[") : -1])
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "list[int]":
        return isinstance(value, list) and bool(value) and all(_type_ok(v, "int") for v in value)
    raise AssertionError(annotation)


def _section(name: str, cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}{name}: expected a mapping of keys, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise RecipeError(f"{where}{name}.{key}: unknown key; allowed: {', '.join(fields)}")
        ann = str(fields[key].type)
        if not _type_ok(value, ann):
            raise RecipeError(
                f"{where}{name}.{key}: {value!r} is a {type(value).__name__}; expected {ann.replace('Optional[', 'null or ').rstrip(']')}"
            )
        kwargs[key] = float(value) if ann == "float" else value
    return cls(**kwargs)


def _validate(r: Recipe, where: str) -> None:
    def bad(key: str, value: Any, allowed: str) -> RecipeError:
        return RecipeError(f"{where}{key}: {value!r} is not allowed; {allowed}")

    if r.selection.method not in METHODS:
        raise bad("selection.method", r.selection.method, f"allowed: {', '.join(METHODS)}")
    s = r.selection.sparsity
    if math.isnan(s) or not 0.0 <= s < 1.0:
        raise bad("selection.sparsity", s, "use a fraction in [0, 1), e.g. 0.5 removes half the state channels")
    if r.selection.multiple_of < 1:
        raise bad("selection.multiple_of", r.selection.multiple_of, "use a positive integer such as 8 (or 1: no rounding)")
    _validate_budgets(r.selection, bad)
    if r.output.state_dtype is not None and r.output.state_dtype not in plugin_state_dtypes():
        raise bad("output.state_dtype", r.output.state_dtype, f"allowed: {', '.join(plugin_state_dtypes())} (the "
                  f"plugin's SSM-state caches, e.g. int8 + a scale per head); leave it out for vLLM's "
                  f"float32/bfloat16/float16 (--mamba-ssm-cache-dtype at serve time)")
    if r.model.dtype not in DTYPES:
        raise bad("model.dtype", r.model.dtype, f"allowed: {', '.join(DTYPES)}")
    if r.model.device not in DEVICES:
        raise bad("model.device", r.model.device, f"allowed: {', '.join(DEVICES)}")
    if not r.model.path:
        raise bad("model.path", r.model.path, "give a Mamba2 model directory or 'reference'")
    if not r.calibration.source:
        raise bad("calibration.source", r.calibration.source, "give a text/JSONL file, a directory, 'reference' or 'wikitext2'")
    for key in ("nsamples", "seq_len", "batch_size"):
        v = getattr(r.calibration, key)
        if v < 1:
            raise bad(f"calibration.{key}", v, "use a positive integer")
    if r.calibration.seq_len < 2:
        raise bad("calibration.seq_len", r.calibration.seq_len, "use at least 2 tokens per window")
    if r.calibration.seed < 0 or r.selection.seed < 0:
        raise RecipeError(f"{where}seed: seeds must be non-negative integers")


def _validate_budgets(s: SelectionSpec, bad) -> None:
    """Per-layer budget keys, as far as they can be checked without the model (length and N come with it)."""
    m = s.multiple_of
    if s.allocation not in ALLOCATIONS:
        raise bad("selection.allocation", s.allocation, f"allowed: {', '.join(ALLOCATIONS)}")
    if s.state_sizes is not None:
        if s.allocation in ("adaptive", "hankel"):
            raise RecipeError(f"selection.state_sizes: cannot be combined with selection.allocation: {s.allocation}; give "
                              "explicit per-layer sizes or let adaptive choose them, not both")
        for i, n in enumerate(s.state_sizes):
            if n < 1:
                raise bad(f"selection.state_sizes[{i}]", n, "every per-layer state size must be at least 1")
            if n % m:
                raise bad(f"selection.state_sizes[{i}]", n, f"every per-layer state size must be a multiple of "
                          f"selection.multiple_of ({m}); round it or lower multiple_of")
    if s.min_state_size is not None:
        if s.min_state_size < 1 or s.min_state_size % m:
            raise bad("selection.min_state_size", s.min_state_size,
                      f"use a positive multiple of selection.multiple_of ({m})")


def build_recipe(raw: Any, overrides: Optional[dict[str, Any]] = None, where: str = "") -> Recipe:
    """Raw mapping (from YAML) + ``{"section.key": value}`` overrides → validated :class:`Recipe`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}top level: expected a mapping with sections {', '.join(_SECTIONS)}, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in _SECTIONS]
    if unknown:
        raise RecipeError(f"{where}{unknown[0]}: unknown section; allowed: {', '.join(_SECTIONS)}")
    merged = {name: dict(raw.get(name) or {}) if isinstance(raw.get(name) or {}, dict) else raw.get(name) for name in _SECTIONS}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        if isinstance(merged[section], dict):
            merged[section][key] = value
    recipe = Recipe(**{name: _section(name, cls, merged[name], where) for name, cls in _SECTIONS.items()})
    _validate(recipe, where)
    return recipe


def load_recipe(path: Optional[Path], overrides: Optional[dict[str, Any]] = None) -> Recipe:
    """Read a YAML recipe (or none) and apply command-line overrides."""
    raw: Any = {}
    where = ""
    if path is not None:
        path = Path(path)
        where = f"{path}: "
        if not path.is_file():
            raise RecipeError(f"{path}: recipe file not found; list the shipped ones with 'ls configs/'")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RecipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the recipe as UTF-8 YAML") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).replace("\n", " ")
            raise RecipeError(f"{path}: not valid YAML ({first}); recipes are plain YAML mappings, no tags") from None
    return build_recipe(raw, overrides, where)
