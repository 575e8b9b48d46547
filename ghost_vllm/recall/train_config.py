"""Typed configuration of the recall-model training run, its command line, and the task of each curriculum stage."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from ghost_vllm.errors import RecipeError
from ghost_vllm.recall.mqar import MQARSpec

__all__ = ["RecallTrainConfig", "RUNTIME_FIELDS", "stage_spec", "validate", "build_parser", "config_from_args"]


def _f(default, help: str):  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RecallTrainConfig:
    out_dir: str = _f("build/recall", "run directory: ckpt/, passed-p<P>/, train_log.jsonl")
    seed: int = _f(0, "seeds the model init and every batch (batch = f(seed, step))")
    # task
    vocab_size: int = _f(512, "MQAR vocabulary: 0 filler, then keys, then values (half each)")
    stages: tuple[int, ...] = _f((4, 8, 16, 24, 32, 48, 64), "pairs per curriculum stage, comma-separated")
    len_per_pair: int = _f(8, "sequence length per pair: seq_len = max(min_seq_len, len_per_pair * pairs)")
    min_seq_len: int = _f(64, "shortest sequence")
    tokens_per_step: int = _f(8192, "batch size = tokens_per_step // seq_len")
    # model
    hidden_size: int = _f(64, "Mamba2 hidden_size (expand 2, n_groups 1, tied embeddings)")
    num_hidden_layers: int = _f(2, "Mamba2 layers")
    head_dim: int = _f(32, "head_dim; num_heads = 2 * hidden_size // head_dim")
    state_size: int = _f(128, "SSM state channels N (d_state)")
    chunk_size: int = _f(32, "SSD chunk size of the torch path (32 is fastest on CPU; only speed depends on it)")
    # optimisation
    lr: float = _f(5e-3, "AdamW peak learning rate (constant after warm-up; may change on resume)")
    warmup_steps: int = _f(200, "linear warm-up steps")
    weight_decay: float = _f(0.1, "AdamW weight decay on matrices (not on biases, norms, A_log, D, dt_bias)")
    grad_clip: float = _f(1.0, "gradient-norm clip")
    # curriculum and budget
    advance_acc: float = _f(0.97, "held-out query accuracy that passes a stage")
    stop_acc: float = _f(0.99, "held-out accuracy on the last stage that ends the run")
    eval_seqs: int = _f(256, "held-out sequences per evaluation (a fixed set per stage)")
    eval_every: int = _f(100, "steps between evaluations")
    log_every: int = _f(10, "steps per train row in train_log.jsonl (means over the window)")
    ckpt_minutes: float = _f(5.0, "minutes between checkpoints (also written on SIGTERM/SIGINT and at the end)")
    max_hours: float = _f(8.0, "wall-clock budget, counted over all resumed runs")
    max_steps: int = _f(200_000, "step budget")
    threads: int = _f(1, "torch CPU threads")


RUNTIME_FIELDS = (
    "out_dir", "threads", "max_hours", "max_steps", "ckpt_minutes", "log_every", "eval_every", "eval_seqs",
    "lr", "advance_acc", "stop_acc",
)
"""Fields a resumed run takes from the command line; every other field comes from the checkpoint."""


def stage_spec(cfg: RecallTrainConfig, pairs: int) -> MQARSpec:
    """The MQAR task of the stage with ``pairs`` pairs (every key queried once)."""
    return MQARSpec(cfg.vocab_size, pairs, max(cfg.min_seq_len, cfg.len_per_pair * pairs))


def validate(cfg: RecallTrainConfig) -> None:
    """Fail before building anything: every stage is a valid task, the heads tile the inner width."""
    if (2 * cfg.hidden_size) % cfg.head_dim:
        raise RecipeError(f"--head-dim {cfg.head_dim} must divide 2 * hidden_size = {2 * cfg.hidden_size}")
    if not cfg.stages or list(cfg.stages) != sorted(set(cfg.stages)):
        raise RecipeError(f"--stages {','.join(map(str, cfg.stages))}: give distinct pair counts in increasing order")
    for pairs in cfg.stages:
        stage_spec(cfg, pairs)


def build_parser(description: str) -> argparse.ArgumentParser:
    """One flag per config field (``--hidden-size`` …) plus ``--export DIR`` and ``--export-stage P``."""
    ap = argparse.ArgumentParser(prog="python -m ghost_vllm.recall.train", description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(RecallTrainConfig):
        flag, help_ = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.name == "stages":
            ap.add_argument(flag, default=",".join(map(str, f.default)), help=help_)
        else:
            ap.add_argument(flag, type=type(f.default), default=f.default, help=help_)
    ap.add_argument("--export", metavar="DIR", default=None,
                    help="write the current weights as a HF directory (+ train_config.json) here and stop")
    ap.add_argument("--export-stage", metavar="P", type=int, default=None,
                    help="with --export: the weights saved when the stage with P pairs was passed")
    return ap


def config_from_args(args: argparse.Namespace) -> RecallTrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RecallTrainConfig)}
    try:
        values["stages"] = tuple(int(s) for s in str(values["stages"]).split(","))
    except ValueError:
        raise RecipeError(f"--stages {values['stages']!r}: expected comma-separated integers like 4,8,16") from None
    return RecallTrainConfig(**values)
