"""``ghost-vllm compare``: dense vs pruned on the same texts — perplexity and state bytes per sequence, as a table.
A checkpoint that asks for the int8 SSM state is scored through it (the state stored as int8 after every token, as
``ghost-vllm eval`` does by default for it), so each row's perplexity belongs to its B/seq."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ghost_vllm.checkpoint import load_model, load_tokenizer
from ghost_vllm.sources import require_model_dir
from ghost_vllm.evaluate import perplexity
from ghost_vllm.inspection import inspect_checkpoint, sequence_bytes
from ghost_vllm.units import STATE_DTYPE_TABLE
from ghost_vllm.loadtest.state_formats import serving_state

__all__ = ["compare_models", "format_comparison"]


def compare_models(models: list[str], data: list[str], seq_len: int = 512, device: str = "cpu",
                   max_tokens: Optional[int] = None, progress: bool = True) -> list[dict]:
    from ghost_vllm.calib.sources import check_source

    for d in data:  # every input checked before the first (slow) evaluation
        check_source(d)
    checked = [(name, require_model_dir(name)) for name in models]
    infos = {str(d): inspect_checkpoint(d) for _, d in checked}
    rows = []
    for name, model_dir in checked:
        info = infos[str(model_dir)]
        tok = load_tokenizer(model_dir)
        model = load_model(model_dir, "auto", device)
        plugin_state = STATE_DTYPE_TABLE[info["ssm_dtype"]].plugin_cached if info["ssm_dtype"] in STATE_DTYPE_TABLE else False
        with serving_state(model, info["ssm_dtype"] if plugin_state else None):
            evals = [perplexity(model, tok, d, seq_len=seq_len, max_tokens=max_tokens, progress=progress).to_dict()
                     for d in data]
        rows.append({"model": name, "inspect": info, "perplexity": evals})
        del model
    return rows


def _state_width(info: dict) -> str:
    """The SSM state's width per layer as a cell: N, the per-layer mean and range, or a projection's ranks r."""
    widths = info.get("state_ranks") or info["state_size_per_layer"]
    lo, hi = min(widths), max(widths)
    text = str(lo) if lo == hi else f"{sum(widths) / len(widths):g} (mean; {lo}–{hi})"
    return f"r {text}" if info.get("state_ranks") else text


def format_comparison(rows: list[dict]) -> str:
    data = [e["source"] for e in rows[0]["perplexity"]]
    base = sequence_bytes(rows[0]["inspect"])[0]
    head = ["model", "state N (r)", "B/seq", "sequences per memory vs first"] + [
        f"{Path(d).name} {kind}" for d in data for kind in ("token ppl", "Δ vs first", "word ppl")
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = [e["token_ppl"] for e in rows[0]["perplexity"]]
    for r in rows:
        i = r["inspect"]
        b = sequence_bytes(i)[0]
        cells = [r["model"], _state_width(i), f"{b:,}", f"{base / b:.3f}×"]
        for e, f in zip(r["perplexity"], first):
            cells += [f"{e['token_ppl']:.2f}", f"{100 * (e['token_ppl'] / f - 1):+.2f} %", f"{e['word_ppl']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    seq = rows[0]["perplexity"][0]["seq_len"] if data else "-"
    what = sorted({sequence_bytes(r["inspect"])[2] for r in rows})
    lines.append(f"\n(B/seq: {'; '.join(what)}, as vLLM holds it; perplexity over whole texts in non-overlapping "
                 f"windows of {seq} tokens)")
    return "\n".join(lines)
