"""Train the MQAR recall model: a small Mamba2 (state_size 128), seeded, resumable, with a pairs curriculum.

    python -m ghost_vllm.recall.train                       # starts, or resumes from <out>/ckpt
    python -m ghost_vllm.recall.train --export build/recall/model            # current weights → HF directory
    python -m ghost_vllm.recall.train --export build/recall/model-p32 --export-stage 32   # weights that passed P=32

Curriculum: stage i trains on ``stages[i]`` pairs in ``max(min_seq_len, len_per_pair * pairs)`` tokens (batch =
``tokens_per_step // seq_len``); it moves on when held-out accuracy reaches ``advance_acc`` and stops when the last
stage reaches ``stop_acc``. Each passed stage is kept in ``<out>/passed-p<P>``. Batches are a pure function of
(seed, step), so a resumed run sees the data an uninterrupted one would. Loss is taken on the query positions only.
Files: ``<out>/ckpt`` (model, ``trainer.pt`` = optimizer + RNG, ``state.json``, ``train_config.json``), written
atomically every ``ckpt_minutes`` and on SIGTERM/SIGINT; ``<out>/train_log.jsonl`` (one JSON row per log/eval/stage).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ghost_vllm.errors import GhostError
from ghost_vllm.recall.mqar import IGNORE, MQARBatch, generate
from ghost_vllm.recall.train_config import (
    RUNTIME_FIELDS,
    RecallTrainConfig,
    build_parser,
    config_from_args,
    stage_spec,
    validate,
)

__all__ = ["build_model", "evaluate", "train", "export"]

log = logging.getLogger(__name__)

def build_model(cfg: RecallTrainConfig):
    """A fresh ``Mamba2ForCausalLM`` (n_groups 1, expand 2, tied embeddings), initialised from ``cfg.seed``."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    inner = 2 * cfg.hidden_size
    config = Mamba2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        state_size=cfg.state_size, head_dim=cfg.head_dim, num_heads=inner // cfg.head_dim, n_groups=1, expand=2,
        chunk_size=cfg.chunk_size, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(cfg.seed)
    return Mamba2ForCausalLM(config)


def _query_loss(model, batch: MQARBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the query positions only (logits for those [M, V] alone) → (loss, correct [M] bool)."""
    hidden = model.backbone(batch.tokens).last_hidden_state  # [B, T, H]
    mask = batch.labels != IGNORE  # [B, T]
    logits = model.lm_head(hidden[mask])  # [M, V]
    target = batch.labels[mask]  # [M]
    return F.cross_entropy(logits, target), logits.argmax(-1) == target


def _train_batch(cfg: RecallTrainConfig, pairs: int, step: int) -> MQARBatch:
    spec = stage_spec(cfg, pairs)
    g = torch.Generator().manual_seed((cfg.seed << 32) | step)
    return generate(spec, max(1, cfg.tokens_per_step // spec.seq_len), g)


@torch.no_grad()
def evaluate(model, cfg: RecallTrainConfig, pairs: int) -> tuple[float, float]:
    """(loss, accuracy) on the stage's fixed held-out set (a seed stream disjoint from training batches)."""
    spec = stage_spec(cfg, pairs)
    g = torch.Generator().manual_seed((cfg.seed << 32) | (1 << 31) | pairs)
    bs = max(1, cfg.tokens_per_step // spec.seq_len)
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for start in range(0, cfg.eval_seqs, bs):
        loss, ok = _query_loss(model, generate(spec, min(bs, cfg.eval_seqs - start), g))
        loss_sum += loss.item() * ok.numel()
        correct += int(ok.sum())
        n += ok.numel()
    model.train()
    return loss_sum / n, correct / n


def _lr(cfg: RecallTrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


def _write_dir(dst: Path, fill) -> None:
    """Build ``dst`` atomically: ``fill(tmp)``, then swap; ``dst.old`` exists only for an instant (``_ckpt_dir``)."""
    tmp, old = dst.with_name(dst.name + ".tmp"), dst.with_name(dst.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def _ckpt_dir(out: Path) -> Path | None:
    for d in (out / "ckpt", out / "ckpt.old"):  # .old survives only a crash between the two renames
        if (d / "state.json").exists():
            return d
    return None


def _save(model, opt, cfg: RecallTrainConfig, state: dict, dst: Path) -> None:
    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        if opt is not None:
            torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        (tmp / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))

    _write_dir(dst, fill)


def _load_config(path: Path, cli: RecallTrainConfig) -> RecallTrainConfig:
    saved = json.loads(path.read_text())
    saved["stages"] = tuple(saved["stages"])
    saved.update({k: getattr(cli, k) for k in RUNTIME_FIELDS})
    cfg = RecallTrainConfig(**saved)
    differ = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(cli, f.name)]
    if differ:
        log.warning("resuming with the checkpoint's %s (command line differs; start a new --out-dir to change them)",
                    ", ".join(differ))
    return cfg


def train(cli: RecallTrainConfig) -> dict:
    """Train (or resume) until the last stage reaches ``stop_acc`` or the step/time budget ends; returns the state."""
    from safetensors.torch import load_file

    torch.set_num_threads(cli.threads)
    out = Path(cli.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = _ckpt_dir(out)
    cfg = _load_config(ckpt / "train_config.json", cli) if ckpt else cli
    validate(cfg)
    model = build_model(cfg)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    state = {"step": 0, "stage": 0, "elapsed_s": 0.0, "passed": {}, "last_eval": None, "done": False}
    if ckpt:
        state = json.loads((ckpt / "state.json").read_text())
        result = model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
        assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}, result
        model.tie_weights()
        trainer = torch.load(ckpt / "trainer.pt", weights_only=True)
        opt.load_state_dict(trainer["optimizer"])
        torch.set_rng_state(trainer["torch_rng"])
        log.info("resumed from %s at step %d, stage %d (%d pairs)", ckpt, state["step"], state["stage"],
                 cfg.stages[state["stage"]])
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters (%.2f MB fp32); stages %s", n_params, n_params * 4 / 2**20, list(cfg.stages))

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    model.train()
    t0 = time.time() - state["elapsed_s"]
    last_ckpt = time.time()
    window: list[tuple[float, float]] = []
    with (out / "train_log.jsonl").open("a") as logf:

        def emit(row: dict) -> None:
            logf.write(json.dumps(row) + "\n")
            logf.flush()

        while not state["done"] and stop["signal"] is None:
            step, pairs = state["step"], cfg.stages[state["stage"]]
            seq_len = stage_spec(cfg, pairs).seq_len
            if step >= cfg.max_steps or time.time() - t0 > cfg.max_hours * 3600:
                log.info("budget reached (step %d, %.1f h)", step, (time.time() - t0) / 3600)
                break
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            loss, ok = _query_loss(model, _train_batch(cfg, pairs, step))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] = step = step + 1
            state["elapsed_s"] = time.time() - t0
            window.append((loss.item(), ok.float().mean().item()))
            if step % cfg.log_every == 0:
                loss_m, acc_m = (sum(v) / len(window) for v in zip(*window))
                window.clear()
                emit({"kind": "train", "step": step, "pairs": pairs, "seq_len": seq_len, "loss": loss_m, "acc": acc_m,
                      "lr": _lr(cfg, step - 1), "wall_s": round(state["elapsed_s"], 1)})
            if step % cfg.eval_every == 0:
                eval_loss, eval_acc = evaluate(model, cfg, pairs)
                state["last_eval"] = {"step": step, "pairs": pairs, "loss": eval_loss, "acc": eval_acc}
                emit({"kind": "eval", "step": step, "pairs": pairs, "seq_len": seq_len, "loss": eval_loss,
                      "acc": eval_acc, "wall_s": round(time.time() - t0, 1)})
                log.info("step %d pairs %d: held-out loss %.3f acc %.3f (%.2f s/step overall)", step, pairs,
                         eval_loss, eval_acc, state["elapsed_s"] / step)
                last = state["stage"] == len(cfg.stages) - 1
                if eval_acc >= cfg.advance_acc:
                    state["done"] = last and eval_acc >= cfg.stop_acc
                    if str(pairs) not in state["passed"] or state["done"]:
                        state["passed"][str(pairs)] = {"step": step, "acc": eval_acc}
                        _save(model, None, cfg, dict(state), out / f"passed-p{pairs}")
                        emit({"kind": "stage", "step": step, "passed": pairs, "acc": eval_acc,
                              "wall_s": round(time.time() - t0, 1)})
                        log.info("passed %d pairs at step %d (acc %.3f)", pairs, step, eval_acc)
                    if not last:
                        state["stage"] += 1
            if time.time() - last_ckpt > cfg.ckpt_minutes * 60:
                _save(model, opt, cfg, state, out / "ckpt")
                last_ckpt = time.time()
    _save(model, opt, cfg, state, out / "ckpt")
    why = f"signal {stop['signal']}" if stop["signal"] else ("done" if state["done"] else "budget")
    log.info("stopped (%s) at step %d, stage %d; checkpoint in %s", why, state["step"], state["stage"], out / "ckpt")
    return state


def export(out_dir: Path, dst: Path, stage: int | None = None) -> None:
    """Write the current weights (or those saved when ``stage`` pairs were passed) as a HF directory to ``dst``."""
    src = out_dir / f"passed-p{stage}" if stage is not None else _ckpt_dir(out_dir)
    if src is None or not (src / "model.safetensors").exists():
        raise GhostError(f"nothing to export: no checkpoint in {src or out_dir / 'ckpt'}; train first")
    state = json.loads((src / "state.json").read_text())
    train_cfg = json.loads((src / "train_config.json").read_text())

    def fill(tmp: Path) -> None:
        for name in ("config.json", "model.safetensors", "generation_config.json"):
            if (src / name).exists():
                shutil.copy(src / name, tmp / name)
        report = {"train_config": train_cfg, "state": state, "source": str(src)}
        (tmp / "train_config.json").write_text(json.dumps(report, indent=1))

    _write_dir(dst, fill)
    log.info("exported %s (step %d) to %s", src, state["step"], dst)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.export is not None:
            export(Path(cfg.out_dir), Path(args.export), args.export_stage)
        else:
            train(cfg)
    except GhostError as e:
        raise SystemExit(f"{type(e).__name__}: {e}") from None


if __name__ == "__main__":
    main()
