"""Evaluate the bundled reference Mamba2 (or the bundled hybrid) and write its model card (README.md + card.json
beside the weights).

    python benchmarks/reference_card.py [--work-dir build/reference] [--wikitext ../shared/data/wikitext-2-raw/wiki.test.raw]
    python benchmarks/reference_card.py --model hybrid      # ghost_vllm/reference/hybrid_model, build/hybrid

Measures, with the project's own evaluation code: held-out (validation half) token/word perplexity, WikiText-2 raw test
at seq_len 512, a unigram baseline on both, and whether the state is used (90 % of state channels removed at random
must raise WikiText-2 perplexity by at least 20 %). Also records the sha256 of the weights, the training curve (PNG),
tokens seen and wall time from the training log, and a short-slice perplexity that tests/test_reference_model.py
re-checks.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from ghost_vllm.checkpoint import load_model, load_tokenizer
from ghost_vllm.commands.io import write_json_atomic, write_text_atomic
from ghost_vllm.evaluate import perplexity_of_text
import ghost_vllm
from ghost_vllm.recipe import SelectionSpec
from ghost_vllm.families import family_for_config
from ghost_vllm.reference import CALIBRATION_TEXT, HYBRID_MODEL_DIR, MODEL_DIR, VALIDATION_TEXT

log = logging.getLogger("reference_card")

SLICE_TOKENS = 4096  # the short slice the test re-evaluates
SLICE_SEQ_LEN = 512


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def unigram(train_ids: torch.Tensor, vocab: int, text: str, tok) -> dict:
    """Add-one unigram model of the training tokens evaluated on ``text``: the floor any LM must beat."""
    counts = torch.bincount(train_ids.long(), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    nll = -logp[ids].sum().item()
    return {"tokens": len(ids), "token_ppl": math.exp(nll / len(ids)), "word_ppl": math.exp(nll / len(text.split()))}


def loss_curve(log_path: Path, png: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    # smoothed training loss + held-out loss
    k = 25
    smooth = [sum(r["loss"] for r in rows[max(0, i - k + 1) : i + 1]) / len(rows[max(0, i - k + 1) : i + 1])
              for i in range(len(rows))]
    ax.plot(steps, smooth, label=f"train loss ({k}-step mean)")
    held = [(r["step"], r["heldout_loss"]) for r in rows if "heldout_loss" in r]
    ax.plot([s for s, _ in held], [v for _, v in held], marker="o", ms=3, label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("reference Mamba2 training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    last = rows[-1]
    best = min(held, key=lambda x: x[1]) if held else (None, None)
    at_best = next((r for r in rows if r["step"] == best[0]), last)
    return {"steps": last["step"], "tokens_seen": last["tokens_seen"], "wall_time_s": last["elapsed_s"],
            "best_step": best[0], "best_heldout_loss": best[1], "tokens_seen_at_best": at_best["tokens_seen"],
            "wall_time_s_at_best": at_best["elapsed_s"]}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("reference", "hybrid"), default="reference")
    ap.add_argument("--work-dir", type=Path, default=None, help="training work dir (default build/<model>)")
    ap.add_argument("--wikitext", type=Path, default=Path("../shared/data/wikitext-2-raw/wiki.test.raw"))
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--training-note", default="", help="free text on how the run went (resumes, schedule changes)")
    ap.add_argument("--render-only", action="store_true", help="rewrite README.md from the existing card.json")
    args = ap.parse_args()
    if args.render_only:
        model_dir = HYBRID_MODEL_DIR if args.model == "hybrid" else MODEL_DIR
        card = json.loads((model_dir / "card.json").read_text())
        write_text_atomic(model_dir / "README.md", render_hybrid(card) if args.model == "hybrid" else render(card))
        return
    torch.set_num_threads(2)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    hybrid = args.model == "hybrid"
    model_dir = HYBRID_MODEL_DIR if hybrid else MODEL_DIR
    args.work_dir = args.work_dir or Path("build/hybrid" if hybrid else "build/reference")
    model = load_model(model_dir, "float32")
    tok = load_tokenizer(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    family = family_for_config(cfg)
    valid = VALIDATION_TEXT.read_text(encoding="utf-8")
    wiki = args.wikitext.read_text(encoding="utf-8")
    t0 = time.time()
    card: dict = {"model_dir": f"ghost_vllm/reference/{model_dir.name}",
                  "sha256": {"model.safetensors": sha256(model_dir / "model.safetensors")}}
    if hybrid:
        layout = family.layout(cfg)
        card["architecture"] = {"class": cfg["architectures"][0], "pattern": "".join(
            {"mamba": "M", "attention": "*", "mlp": "-", "moe": "E"}[k] for k in family.kinds(cfg)),
            "hidden_size": cfg["hidden_size"], "state_size": layout.state_size, "head_dim": layout.head_dim,
            "num_heads": layout.num_heads, "n_groups": layout.n_groups, "conv_kernel": layout.conv_kernel,
            "num_attention_heads": cfg["num_attention_heads"], "num_key_value_heads": cfg["num_key_value_heads"],
            "attention_head_dim": cfg["head_dim"], "intermediate_size": cfg["intermediate_size"],
            "vocab_size": cfg["vocab_size"], "tie_word_embeddings": cfg["tie_word_embeddings"],
            "stored_dtype": cfg.get("dtype") or cfg.get("torch_dtype")}
    else:
        card["architecture"] = {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "state_size", "head_dim",
                                                     "num_heads", "n_groups", "expand", "conv_kernel", "vocab_size",
                                                     "tie_word_embeddings")}
    card["parameters"] = sum(p.numel() for p in model.parameters())
    card["heldout"] = perplexity_of_text(model, tok, valid, args.seq_len, source=str(VALIDATION_TEXT), progress=False).to_dict()
    card["wikitext2_test"] = perplexity_of_text(model, tok, wiki, args.seq_len, source=str(args.wikitext), progress=False).to_dict()
    card["slice"] = {"source": "ghost_vllm/reference/data/validation.txt", "max_tokens": SLICE_TOKENS,
                     "seq_len": SLICE_SEQ_LEN, **perplexity_of_text(model, tok, valid, SLICE_SEQ_LEN,
                                                                   max_tokens=SLICE_TOKENS, progress=False).to_dict()}
    # the token ids of the training split (the hybrid trains on the reference split: configs/hybrid-train.yaml data_dir)
    train_ids_path = Path("build/reference" if hybrid else args.work_dir) / "train.ids.safetensors"
    if train_ids_path.exists():
        from safetensors.torch import load_file

        train_ids = load_file(str(train_ids_path))["ids"]
        card["unigram_baseline"] = {"heldout": unigram(train_ids, cfg["vocab_size"], valid, tok),
                                    "wikitext2_test": unigram(train_ids, cfg["vocab_size"], wiki, tok)}
    # the state is used: remove 90 % of the channels at random (seeded), evaluate WikiText-2 again
    windows = torch.tensor(tok(CALIBRATION_TEXT.read_text(), add_special_tokens=False)["input_ids"][: 8 * 128]).view(8, 128)
    ablated = load_model(model_dir, "float32")
    ghost_vllm.prune(ablated, windows, SelectionSpec("random", 0.9, seed=0, allocation="uniform", refit=False), progress=False)
    r90 = perplexity_of_text(ablated, tok, wiki, args.seq_len, source=str(args.wikitext), progress=False).to_dict()
    card["state_use"] = {"method": "random", "sparsity": 0.9, "state_size": family.state_size(ablated.config),
                         "wikitext2_test": r90,
                         "ppl_increase": r90["token_ppl"] / card["wikitext2_test"]["token_ppl"] - 1.0}
    if (args.work_dir / "log.jsonl").exists():
        card["training"] = loss_curve(args.work_dir / "log.jsonl", model_dir / "loss_curve.png")
        card["training"]["config"] = f"configs/{'hybrid' if hybrid else 'reference'}-train.yaml"
        card["training"]["note"] = args.training_note
    card["eval_wall_time_s"] = time.time() - t0
    write_json_atomic(model_dir / "card.json", card)
    text = render_hybrid(card) if hybrid else render(card)
    write_text_atomic(model_dir / "README.md", text)
    print(text)


def render(c: dict) -> str:
    a, t = c["architecture"], c.get("training", {})
    lines = [
        "# ghost_vllm reference Mamba2",
        "",
        "A small Mamba2 trained from scratch by this project so that pruning runs end to end offline and the fidelity",
        "benchmarks mean something. Weights: `model.safetensors` (fp32), tokenizer: byte-level BPE trained on the",
        "training split. Written by `python benchmarks/reference_card.py`; numbers from `ghost-vllm`'s own evaluation.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `Mamba2ForCausalLM`, hidden {a['hidden_size']}, {a['num_hidden_layers']} layers, state_size "
        f"{a['state_size']}, head_dim {a['head_dim']} ({a['num_heads']} heads), n_groups {a['n_groups']}, expand "
        f"{a['expand']}, conv {a['conv_kernel']}, vocab {a['vocab_size']}, tied embeddings |",
        f"| parameters | {c['parameters']:,} |",
        "| data | `../shared/data/wiki-extracts/summaries_en-us.json` (Wikipedia lead sections) in WikiText layout; "
        "5 % of articles held out by title (seed 0), split into `data/calibration.txt` and `data/validation.txt` |",
        f"| weights | the best held-out checkpoint: step {t.get('best_step')}, {t.get('tokens_seen_at_best', 0):,} "
        f"tokens seen, {t.get('wall_time_s_at_best', 0) / 3600:.2f} h of training on this 2-core CPU |",
        f"| training run | {t.get('steps', '?')} steps of 16 × 256 tokens, {t.get('tokens_seen', 0):,} tokens, "
        f"{t.get('wall_time_s', 0) / 3600:.2f} h, AdamW, cosine schedule (`configs/reference-train.yaml`). "
        f"{t.get('note', '')} |",
        f"| sha256 (model.safetensors) | `{c['sha256']['model.safetensors']}` |",
        "",
    ]
    return "\n".join(lines + evaluation_lines(c))


def evaluation_lines(c: dict) -> list[str]:
    a, h, w, s = c["architecture"], c["heldout"], c["wikitext2_test"], c["state_use"]
    u = c.get("unigram_baseline", {})
    return [
        "## Evaluation (seq_len 512, non-overlapping windows, every token scored)",
        "",
        "The checkpoint was picked on the loss of the first 64 windows of the whole held-out split, which overlaps",
        "`data/validation.txt`; the figures below come from `ghost-vllm`'s evaluator on whole texts.",
        "",
        "| text | tokens | token ppl | word ppl | bits/byte | unigram token ppl | unigram word ppl |",
        "|---|---|---|---|---|---|---|",
        f"| held-out Wikipedia (`data/validation.txt`) | {h['tokens']:,} | {h['token_ppl']:.2f} | {h['word_ppl']:.2f} | "
        f"{h['bits_per_byte']:.4f} | {u.get('heldout', {}).get('token_ppl', float('nan')):.1f} | "
        f"{u.get('heldout', {}).get('word_ppl', float('nan')):.1f} |",
        f"| WikiText-2 raw test | {w['tokens']:,} | {w['token_ppl']:.2f} | {w['word_ppl']:.2f} | "
        f"{w['bits_per_byte']:.4f} | {u.get('wikitext2_test', {}).get('token_ppl', float('nan')):.1f} | "
        f"{u.get('wikitext2_test', {}).get('word_ppl', float('nan')):.1f} |",
        "",
        f"State use: removing 90 % of the state channels at random (N {a['state_size']} → {s['state_size']}) raises "
        f"WikiText-2 token perplexity from {w['token_ppl']:.2f} to {s['wikitext2_test']['token_ppl']:.2f} "
        f"(+{100 * s['ppl_increase']:.1f} %).",
        "",
        f"Test slice (re-checked by `tests/test_reference_model.py`): first {c['slice']['max_tokens']} tokens of "
        f"`data/validation.txt`, seq_len {c['slice']['seq_len']}: token ppl {c['slice']['token_ppl']:.4f}.",
        "",
        "![loss curve](loss_curve.png)",
        "",
    ]


def render_hybrid(c: dict) -> str:
    """The reference card's evaluation part under a hybrid header."""
    a, t = c["architecture"], c.get("training", {})
    lines = [
        "# ghost_vllm hybrid (Nemotron-H-shaped)",
        "",
        "A small hybrid trained from scratch by this project on the reference model's text and tokenizer, so that",
        "GHOST's fidelity on a hybrid can be measured offline. Weights: `model.safetensors` (stored "
        f"{a['stored_dtype']}: trained in float32, rounded once at export to stay under 30 MB; evaluated in float32).",
        "Written by `python benchmarks/reference_card.py --model hybrid`.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{a['class']}`, layers `{a['pattern']}` (M Mamba2, * attention, - MLP), hidden "
        f"{a['hidden_size']}; Mamba2: state {a['state_size']}, {a['num_heads']} heads × {a['head_dim']}, n_groups "
        f"{a['n_groups']}, conv {a['conv_kernel']}; attention: {a['num_attention_heads']} heads × "
        f"{a['attention_head_dim']}, {a['num_key_value_heads']} KV heads, no positional encoding; MLP relu² "
        f"{a['intermediate_size']}; vocab {a['vocab_size']}, untied head |",
        f"| parameters | {c['parameters']:,} |",
        f"| weights | the best held-out checkpoint: step {t.get('best_step')}, {t.get('tokens_seen_at_best', 0):,} "
        f"tokens seen |",
        f"| training run | {t.get('steps', '?')} steps of 16 × 256 tokens, {t.get('tokens_seen', 0):,} tokens, "
        f"{t.get('wall_time_s', 0) / 3600:.2f} h, AdamW, cosine schedule (`{t.get('config')}`). {t.get('note', '')} |",
        f"| sha256 (model.safetensors) | `{c['sha256']['model.safetensors']}` |",
        "",
    ]
    return "\n".join(lines + evaluation_lines(c))


if __name__ == "__main__":
    main()
