"""Hybrid models (attention + Mamba2): cache bytes per sequence and sequences per 80 GB of cache memory, dense d_state
vs GHOST 50 % (N/2 in every Mamba layer), at 4k, 32k and 128k tokens of context, on vLLM 0.32's rules.

    python benchmarks/hybrid_table.py        # → benchmarks/results/hybrid/hybrid_table.{json,md}

Every released config in ghost_vllm/families/configs (configs only, no weights). The 80 GB (8·10¹⁰ B) is all cache
memory: weights, activations and the CUDA-graph pool are outside it. KV cache and conv state in bfloat16; the SSM state
in the dtype vLLM picks with ``--mamba-ssm-cache-dtype auto`` (Nemotron-H: float32, the others: the model dtype);
prefix caching off (ghost_vllm's serving setting; with it on vLLM budgets two Mamba blocks per group). The GPU rows
mirror CUDA SM 8.x/9.x with FlashAttention (A100/H100 80 GB); the CPU rows vLLM's CPU backend on an AVX512-BF16 host —
the rules tests/test_hybrid_arith.py checks against vLLM's own functions (ghost_vllm/planner/hybrid.py says how).
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

from ghost_vllm.families import family_for_config
from ghost_vllm.planner.hybrid import PLATFORMS, hybrid_bytes, sequences_in

CONFIGS = Path(__file__).resolve().parents[1] / "ghost_vllm" / "families" / "configs"
OUT = Path(__file__).resolve().parent / "results" / "hybrid"
MEMORY = 80 * 10**9
CONTEXTS = {"4k": 4096, "32k": 32768, "128k": 131072}
PLATFORM_ROWS = ("cuda", "cpu")
VLLM_VERSION = "0.32.0"


def ratio_3dp(r: Fraction) -> str:
    """``r`` with three decimals, cut (never rounded up)."""
    thousandths = r.numerator * 1000 // r.denominator
    return f"{thousandths // 1000}.{thousandths % 1000:03d}"


def row(name: str, cfg: dict, platform: str, context: str) -> dict:
    n = family_for_config(cfg).layout(cfg).state_size
    dense = hybrid_bytes(cfg, CONTEXTS[context], platform=platform)
    pruned = hybrid_bytes(cfg, CONTEXTS[context], platform=platform, state_size=n // 2)
    seqs = {k: sequences_in(MEMORY, hb) for k, hb in (("dense", dense), ("pruned", pruned))}
    ratio = Fraction(seqs["pruned"], seqs["dense"]) if seqs["dense"] else None
    return {"model": name, "platform": platform, "context": context, "context_tokens": CONTEXTS[context],
            "state_size": n, "pruned_state_size": n // 2,
            "beyond_max_position_embeddings": CONTEXTS[context] > int(cfg.get("max_position_embeddings") or 0),
            "dense": dense.to_dict() | {"sequences": seqs["dense"]},
            "pruned": pruned.to_dict() | {"sequences": seqs["pruned"]},
            "ratio": None if ratio is None else [ratio.numerator, ratio.denominator],
            "ratio_3dp": None if ratio is None else ratio_3dp(ratio)}


def _mb(b: int) -> str:
    return f"{b / 1e6:,.1f}"


def table(rows: list[dict], platform: str) -> list[str]:
    lines = ["| model | ctx | SSM dtype | block (tokens) dense → 50 % | Mamba conv+SSM MB/seq dense → 50 % | "
             "attention KV MB/seq dense → 50 % | vLLM MB/seq dense → 50 % | seqs / 80 GB dense | 50 % | "
             "ratio 50 %/dense | larger part dense → 50 % |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["platform"] == platform):
        d, p = r["dense"], r["pruned"]
        far = " †" if r["beyond_max_position_embeddings"] else ""
        lines.append(
            f"| {r['model']} | {r['context']}{far} | {d['layout']['ssm_dtype']} | "
            f"{d['layout']['block_size']:,} → {p['layout']['block_size']:,} | "
            f"{_mb(d['mamba_bytes'])} → {_mb(p['mamba_bytes'])} | "
            f"{_mb(d['attention_bytes'])} → {_mb(p['attention_bytes'])} | "
            f"{_mb(d['vllm_bytes'])} → {_mb(p['vllm_bytes'])} | {d['sequences']:,} | {p['sequences']:,} | "
            f"{r['ratio_3dp']}× | {d['dominant']} → {p['dominant']} |")
    return lines


def main() -> None:
    rows, sources = [], {}
    for path in sorted(CONFIGS.glob("*.json")):
        cfg = json.loads(path.read_text())
        sources[path.stem] = hashlib.sha256(path.read_bytes()).hexdigest()
        for platform in PLATFORM_ROWS:
            rows.extend(row(path.stem, cfg, platform, c) for c in CONTEXTS)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"vllm_rules": VLLM_VERSION, "memory_bytes": MEMORY, "dtype": "bfloat16", "mamba_cache_mode": "none",
            "platforms": {p: PLATFORMS[p].what for p in PLATFORM_ROWS}, "config_sha256": sources}
    (OUT / "hybrid_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = ["Hybrid models on one 80 GB GPU's worth of cache memory (8·10¹⁰ B, all of it cache: weights excluded), "
             "vLLM 0.32's rules (`python benchmarks/hybrid_table.py`). Dense d_state vs GHOST 50 % (N/2 in every Mamba "
             "layer); bf16 KV cache and conv state, SSM state in vLLM's default dtype; prefix caching off; TP 1.", "",
             "*Mamba conv+SSM*: the state one sequence holds in all Mamba layers (unpadded); *attention KV*: K and "
             "V of every attention layer in whole blocks; *vLLM*: the block ids the sequence takes from the pool × "
             "bytes per block (the Mamba page padded up to the attention page, narrower KV-cache groups padded to "
             "the widest); *seqs*: (num_blocks − 1) // blocks per sequence; *ratio*: cut to 3 decimals; *larger "
             "part*: of the vLLM footprint. † beyond the config's max_position_embeddings (vLLM refuses such a "
             "max_model_len unless told otherwise).", "",
             "GPU rules (CUDA SM 8.x/9.x, FlashAttention: blocks start at 16 tokens, multiples of 16):",
             "", *table(rows, "cuda"), "",
             "CPU rules (vLLM's CPU backend, AVX512-BF16 host: blocks start at 128 tokens; the SSM state falls back to "
             "float32):", "", *table(rows, "cpu")]
    (OUT / "hybrid_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
