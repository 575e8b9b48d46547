"""What a checkpoint's state costs per sequence: per-layer N read from the weight shapes, bytes per sequence from
the real dtypes, and the same for the original model recorded in ``ghost.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ghost_vllm.checkpoint import weight_shapes
from ghost_vllm.ghost_format import config_state_dtype, is_ghost_checkpoint, read_ghost_json
from ghost_vllm.errors import CheckpointError
from ghost_vllm.state import state_size_of
from ghost_vllm.units import STATE_DTYPE_TABLE

__all__ = ["layer_state_sizes", "inspect_checkpoint", "format_inspection", "sequence_bytes", "HYBRID_CONTEXTS"]


def layer_state_sizes(model_dir: Path, cfg: dict[str, Any]) -> list[int]:
    """N of every Mamba layer (the family's Mamba layers, in order), from ``in_proj`` rows = 2I + 2GN + H."""
    from ghost_vllm.families import model_family

    family = model_family(cfg, f"{model_dir}/config.json")
    layout = family.layout(cfg)
    shapes = weight_shapes(model_dir)
    out = []
    for i in family.mamba_layers(cfg):
        names = [f"{prefix}in_proj.weight" for prefix in family.mixer_prefixes(cfg, i)]
        name = next((n for n in names if n in shapes), None)
        if name is None:
            raise CheckpointError(f"{model_dir}: tensor {names[0]} is missing")
        rows = shapes[name][0][0]
        n2g = rows - 2 * layout.intermediate_size - layout.num_heads
        if n2g <= 0 or n2g % (2 * layout.n_groups):
            raise CheckpointError(f"{model_dir}: {name} has {rows} rows, which fits no state_size")
        out.append(n2g // (2 * layout.n_groups))
    return out


def inspect_checkpoint(model_dir: Path, dtype: str | None = None) -> dict[str, Any]:
    from ghost_vllm.sources import resolve

    source = resolve(str(model_dir))
    cfg = source.config
    if source.format == "mamba_ssm":  # state-spaces layout: shapes follow from the config (weights may be a pickle)
        cfg = {**cfg, "architectures": ["mamba_ssm layout"], "dtype": dtype or "bfloat16"}
        per_layer = [cfg["state_size"]] * cfg["num_hidden_layers"]
    else:
        per_layer = layer_state_sizes(model_dir, cfg)
    family = source.family
    dtype = dtype or str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    ssm_dtype = family.default_ssm_cache_dtype(cfg) or dtype  # vLLM's "auto" (Nemotron-H keeps a float32 state)
    ghost = read_ghost_json(model_dir) if is_ghost_checkpoint(model_dir) else None
    n_orig = int(ghost["state_size_original"]) if ghost else family.state_size(cfg)
    served_ssm = config_state_dtype(cfg, f"{model_dir}/config.json") or ssm_dtype  # the plugin's int8 state
    ranks = family.state_ranks(cfg, f"{model_dir}/config.json")
    served = ranks is None or family.projected_state_served
    pruned = state_size_of(cfg, dtype=dtype, ssm_dtype=served_ssm, state_sizes=per_layer, state_ranks=ranks)
    original = state_size_of(cfg, state_size=n_orig, dtype=dtype, ssm_dtype=ssm_dtype)
    return {
        "model": str(model_dir),
        "architecture": (cfg.get("architectures") or ["?"])[0],
        "dtype": dtype,
        "ssm_dtype": served_ssm,
        "ssm_dtype_original": ssm_dtype,
        "family": family.name,
        "layers": family.num_layers(cfg),
        "mamba_layers": family.mamba_layers(cfg),
        "n_groups": family.layout(cfg).n_groups,
        "state_size": family.state_size(cfg),
        "state_size_original": n_orig,
        "state_size_per_layer": per_layer,
        **({"state_ranks": ranks} if ranks else {}),
        "bytes_per_layer": list(pruned.layer_bytes),
        "allocation": ghost.get("allocation", "uniform") if ghost else None,
        "method": ghost.get("method") if ghost else None,
        "sparsity": ghost.get("sparsity") if ghost else None,
        "bytes_per_sequence": pruned.bytes_per_sequence,
        "bytes_per_sequence_original": original.bytes_per_sequence,
        "ssm_bytes_per_sequence": pruned.ssm_bytes,
        "conv_bytes_per_sequence": pruned.conv_bytes,
        "state_reduction_ratio": original.bytes_per_sequence / pruned.bytes_per_sequence,
        # vLLM's view with attention: only for what the plugin serves (a projected hybrid is evaluated, not served)
        **({"hybrid": _hybrid_context_table(cfg, {**cfg, family.state_key: n_orig}, dtype)}
           if family.attention_layers(cfg) and served else {}),
        **({} if served else {"not_served": f"a projected state on {family.hf_architectures[0]} is not served by the "
                                            f"vLLM plugin yet ('ghost-vllm compare' evaluates it)"}),
    }


HYBRID_CONTEXTS = (4096, 32768, 131072)


def _hybrid_context_table(cfg: dict[str, Any], original: dict[str, Any], dtype: str) -> list[dict[str, Any]]:
    """Per context length, vLLM's view of one sequence (GPU rules, prefix caching off): Mamba state vs attention KV,
    the block size grown to the Mamba page, dense vs this checkpoint (:mod:`ghost_vllm.planner.hybrid`)."""
    from ghost_vllm.planner.hybrid import hybrid_bytes

    rows = []
    for T in HYBRID_CONTEXTS:
        dense = hybrid_bytes(original, T, dtype=dtype)
        mine = hybrid_bytes(cfg, T, dtype=dtype)
        rows.append({"context": T, "block_size": mine.layout.block_size, "block_size_original": dense.layout.block_size,
                     "mamba_bytes": mine.vllm_mamba_bytes, "attention_bytes": mine.vllm_attention_bytes,
                     "bytes": mine.vllm_bytes, "bytes_original": dense.vllm_bytes,
                     "ratio": dense.vllm_bytes / mine.vllm_bytes, "dominant": mine.dominant})
    return rows


def sequence_bytes(info: dict[str, Any]) -> tuple[int, int, str]:
    """(this checkpoint's, the original's) bytes per sequence as vLLM holds them, and what they include — the one
    figure ``compare`` and ``slots`` print: the Mamba state for pure Mamba2; for a hybrid the Mamba state plus the
    attention KV of a sequence at the first of :data:`HYBRID_CONTEXTS` (vLLM's GPU page rules, prefix caching off),
    since the attention KV is what a hybrid's sequence mostly costs."""
    if info.get("hybrid"):
        r = info["hybrid"][0]
        return r["bytes"], r["bytes_original"], f"Mamba state + attention KV at {r['context']:,} tokens"
    return info["bytes_per_sequence"], info["bytes_per_sequence_original"], "Mamba state"


def format_inspection(info: dict[str, Any]) -> str:
    mib = 1 / 2**20
    lines = [
        f"model            {info['model']} ({info['architecture']}, {info['dtype']}; SSM state {info['ssm_dtype']}"
        + (" + a float32 scale per head" if info["ssm_dtype"] in STATE_DTYPE_TABLE
           and STATE_DTYPE_TABLE[info["ssm_dtype"]].scale_bytes_per_head else "") + ")",
        f"layers           {info['layers']}" + (f" ({len(info['mamba_layers'])} with a Mamba2 mixer)"
                                                    if len(info["mamba_layers"]) != info["layers"] else "")
        + f", n_groups {info['n_groups']}",
        f"state_size N     {info['state_size_original']} → {info['state_size']}"
        + (f"  ({info['method']}, κ={info['sparsity']})" if info["method"] else ""),
        f"N per layer      {' '.join(map(str, info['state_size_per_layer']))}"
        + (f"  ({info['allocation']} allocation)" if info.get("allocation") else ""),
        *([f"state rank r     {' '.join(map(str, info['state_ranks']))}  (balanced truncation: the SSM state is r wide, "
           f"the conv state keeps N)"] if info.get("state_ranks") else []),
        f"bytes per layer  {' '.join(f'{b:,}' for b in info['bytes_per_layer'])}",
        f"state/sequence   {info['bytes_per_sequence']:,} B ({info['bytes_per_sequence'] * mib:.3f} MiB)"
        f" vs original {info['bytes_per_sequence_original']:,} B ({info['bytes_per_sequence_original'] * mib:.3f} MiB"
        + (f", SSM state {info['ssm_dtype_original']}" if info["ssm_dtype"] != info.get("ssm_dtype_original",
                                                                                       info["ssm_dtype"]) else "") + ")",
        f"  of which       SSM {info['ssm_bytes_per_sequence']:,} B, conv {info['conv_bytes_per_sequence']:,} B",
        f"reduction        {info['state_reduction_ratio']:.3f}× "
        + ("smaller Mamba state (a sequence also holds attention KV: below)" if info.get("hybrid") else
           "smaller Mamba state" if info.get("not_served") else "more sequences in the same state memory"),
        *([f"serving          {info['not_served']}"] if info.get("not_served") else []),
    ]
    if info.get("hybrid"):
        lines.append("with attention   (vLLM, GPU rules, prefix caching off: the attention block grows to the Mamba page)")
        lines.append("  context  block (orig)   Mamba MiB  attention MiB  total MiB (orig)     ratio  larger part")
        for r in info["hybrid"]:
            lines.append(f"  {r['context']:>7,}  {r['block_size']:>5} ({r['block_size_original']:>5})  "
                         f"{r['mamba_bytes'] * mib:>9.3f}  {r['attention_bytes'] * mib:>13.3f}  "
                         f"{r['bytes'] * mib:>9.3f} ({r['bytes_original'] * mib:>9.3f})  {r['ratio']:>6.3f}×  "
                         f"{r['dominant']}")
    return "\n".join(lines)
