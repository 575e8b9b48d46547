"""Typed, strict training recipe for the reference model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ModelShape", "TrainSchedule", "TrainConfig", "load_train_config"]


@dataclass(frozen=True)
class ModelShape:
    """Shape of the trained model. ``family`` ``mamba2`` (pure) or ``nemotron_h`` (hybrid: ``layers`` is the
    Nemotron-H pattern, M = Mamba2 mixer, * = attention, - = MLP; the attention/MLP fields apply only there)."""

    family: str = "mamba2"
    hidden_size: int = 256
    num_hidden_layers: int = 6
    state_size: int = 128
    head_dim: int = 64
    n_groups: int = 1
    expand: int = 2
    conv_kernel: int = 4
    chunk_size: int = 64
    layers: str = ""
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    attention_head_dim: int = 32
    intermediate_size: int = 512


@dataclass(frozen=True)
class TrainSchedule:
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    max_steps: int = 4000
    max_hours: float = 2.0
    eval_every: int = 100
    checkpoint_every: int = 100
    threads: int = 1


@dataclass(frozen=True)
class TrainConfig:
    source: str
    work_dir: str = "build/reference"
    data_dir: str = ""  # where prepare wrote train.txt/heldout.txt/tokenizer; "" = work_dir
    export_dtype: str = "float32"
    heldout_fraction: float = 0.05
    seed: int = 0
    vocab_size: int = 8192
    model: ModelShape = field(default_factory=ModelShape)
    train: TrainSchedule = field(default_factory=TrainSchedule)


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        sub = {"model": ModelShape, "train": TrainSchedule}.get(name) if cls is TrainConfig else None
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    return cls(**kwargs)


def load_train_config(path: Path) -> TrainConfig:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return _build(TrainConfig, raw, str(path))
