"""Train the bundled reference Mamba2 (seeded, resumable).

    python -m ghost_vllm.reference.prepare --config configs/reference-train.yaml   # once: text split + tokenizer
    python -m ghost_vllm.reference.train   --config configs/reference-train.yaml   # resumes from <work_dir>/ckpt
    python -m ghost_vllm.reference.train   --config configs/reference-train.yaml --export ghost_vllm/reference/model

Batches are a pure function of (seed, step), so a resumed run sees exactly the data an uninterrupted one would.
Checkpoints: ``ckpt/model.safetensors`` + ``ckpt/optim.pt`` (tensors only, read with ``weights_only=True``) +
``ckpt/state.json``; the best held-out checkpoint is kept in ``best/``; every eval appends to ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch

from ghost_vllm.reference.train_config import TrainConfig, load_train_config

__all__ = ["build_model", "tokenize_file", "train", "export"]

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig, vocab_size: int):
    if cfg.model.family == "nemotron_h":
        return _build_nemotron_h(cfg, vocab_size)
    if cfg.model.family != "mamba2":
        raise ValueError(f"model.family: {cfg.model.family!r} is not trainable here; use mamba2 or nemotron_h")
    from transformers import Mamba2Config, Mamba2ForCausalLM

    m = cfg.model
    inner = m.expand * m.hidden_size
    config = Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        state_size=m.state_size,
        head_dim=m.head_dim,
        num_heads=inner // m.head_dim,
        n_groups=m.n_groups,
        expand=m.expand,
        conv_kernel=m.conv_kernel,
        chunk_size=m.chunk_size,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(cfg.seed)
    return Mamba2ForCausalLM(config)


def _build_nemotron_h(cfg: TrainConfig, vocab_size: int):
    """A Nemotron-H-shaped hybrid (untied head: vLLM's NemotronH has no tied-embedding path)."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    m = cfg.model
    if not m.layers or set(m.layers) - set("M*-"):
        raise ValueError(f"model.layers: {m.layers!r}: give a Nemotron-H pattern of M (Mamba2), * (attention), - (MLP)")
    config = NemotronHConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        hybrid_override_pattern=m.layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads,
        head_dim=m.attention_head_dim,
        intermediate_size=m.intermediate_size,
        ssm_state_size=m.state_size,
        mamba_num_heads=m.expand * m.hidden_size // m.head_dim,
        mamba_head_dim=m.head_dim,
        n_groups=m.n_groups,
        expand=m.expand,
        conv_kernel=m.conv_kernel,
        chunk_size=m.chunk_size,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(cfg.seed)
    return NemotronHForCausalLM(config)


def load_checkpoint_model(ckpt: Path):
    """The model saved in ``ckpt`` by :func:`_save`, through ``from_pretrained`` (which maps transformers' on-disk
    names back, e.g. Nemotron-H's ``backbone.*``; a plain ``load_state_dict(strict=False)`` would silently load
    nothing for such a model and resume from random weights)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)


def tokenize_file(path: Path, tokenizer_dir: Path, cache: Path) -> torch.Tensor:
    """Whole file → 1-D int32 token ids, cached as safetensors beside the text."""
    from safetensors.torch import load_file, save_file

    if cache.exists():
        return load_file(str(cache))["ids"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = path.read_text(encoding="utf-8")
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.int32)
    save_file({"ids": ids}, str(cache))
    return ids


def _batch(ids: torch.Tensor, seed: int, step: int, batch: int, seq_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch,), generator=g)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()]).long()


def _lr(cfg: TrainConfig, step: int) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    frac = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def _heldout_loss(model, ids: torch.Tensor, seq_len: int, max_windows: int = 64) -> float:
    model.eval()
    n = min(max_windows, (ids.numel() - 1) // seq_len)
    x = ids[: n * seq_len].view(n, seq_len).long()
    total = 0.0
    for chunk in x.split(16):
        total += model(chunk, labels=chunk).loss.item() * chunk.shape[0]
    model.train()
    return total / n


def _save(model, opt, state: dict, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    if opt is not None:
        torch.save(opt.state_dict(), tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def train(cfg: TrainConfig) -> None:
    t = cfg.train
    torch.set_num_threads(t.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data_dir or cfg.work_dir)
    tok_dir = data / "tokenizer"
    train_ids = tokenize_file(data / "train.txt", tok_dir, data / "train.ids.safetensors")
    held_ids = tokenize_file(data / "heldout.txt", tok_dir, data / "heldout.ids.safetensors")
    log.info("tokens: train %d, held-out %d", train_ids.numel(), held_ids.numel())

    vocab = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]) + 2
    vocab = int(math.ceil(vocab / 64) * 64)
    ckpt = work / "ckpt"
    resuming = (ckpt / "state.json").exists()
    model = load_checkpoint_model(ckpt) if resuming else build_model(cfg, vocab)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr, betas=(0.9, 0.95),
    )
    state = {"step": 0, "elapsed_s": 0.0, "best_loss": float("inf"), "tokens_seen": 0}
    if resuming:
        state = json.loads((ckpt / "state.json").read_text())
        opt.load_state_dict(torch.load(ckpt / "optim.pt", weights_only=True))
        log.info("resumed at step %d (%.0f s so far)", state["step"], state["elapsed_s"])

    model.train()
    t0 = time.time() - state["elapsed_s"]
    logf = (work / "log.jsonl").open("a")
    while state["step"] < t.max_steps and (time.time() - t0) < t.max_hours * 3600:
        step = state["step"]
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        x = _batch(train_ids, cfg.seed, step, t.batch_size, t.seq_len)
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] = step + 1
        state["tokens_seen"] += x.numel()
        state["elapsed_s"] = time.time() - t0
        row = {"step": state["step"], "loss": loss.item(), "lr": _lr(cfg, step), "elapsed_s": state["elapsed_s"],
               "tokens_seen": state["tokens_seen"]}
        if state["step"] % t.eval_every == 0 or state["step"] == t.max_steps:
            row["heldout_loss"] = _heldout_loss(model, held_ids, t.seq_len)
            log.info("step %d loss %.3f held-out %.3f (ppl %.1f) %.0f s", state["step"], row["loss"],
                     row["heldout_loss"], math.exp(row["heldout_loss"]), state["elapsed_s"])
            if row["heldout_loss"] < state["best_loss"]:
                state["best_loss"] = row["heldout_loss"]
                _save(model, None, dict(state), work / "best")
        logf.write(json.dumps(row) + "\n")
        logf.flush()
        if state["step"] % t.checkpoint_every == 0:
            _save(model, opt, state, ckpt)
    _save(model, opt, state, ckpt)
    log.info("stopped at step %d after %.0f s", state["step"], state["elapsed_s"])


def export(cfg: TrainConfig, out: Path) -> None:
    """Best checkpoint + tokenizer → ``out`` (the directory shipped in the package)."""
    work = Path(cfg.work_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "best", tmp, ignore=shutil.ignore_patterns("optim.pt"))
    if cfg.export_dtype != "float32":  # stay under the package size budget; evaluation upcasts to float32
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=getattr(torch, cfg.export_dtype))
        model.save_pretrained(str(tmp))
    for f in (Path(cfg.data_dir or cfg.work_dir) / "tokenizer").iterdir():
        shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/reference-train.yaml")
    ap.add_argument("--export", type=Path, default=None, help="copy the best checkpoint + tokenizer here and stop")
    args = ap.parse_args()
    cfg = load_train_config(Path(args.config))
    if args.export:
        export(cfg, args.export)
    else:
        train(cfg)


if __name__ == "__main__":
    main()
