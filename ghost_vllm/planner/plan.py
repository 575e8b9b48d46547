"""``ghost-vllm plan``: state bytes, vLLM's block arithmetic and the concurrency a state memory holds, per model and
variant, before any engine starts.

Two modes:
* **exact** (``cache_memory`` = vLLM's ``kv_cache_memory_bytes``): the block count is what vLLM computes from that
  memory (tests/test_plan_vllm.py checks it against real engines);
* **estimate** (``gpu_memory`` × ``gpu_memory_utilization``): the cache gets what is left after the weights (at the
  serving dtype, vocabulary padded to 64 rows as vLLM does, divided over tensor-parallel ranks) and a fixed
  ``overhead`` allowance for everything vLLM's profiling run measures on the GPU (peak activations of a
  ``max_num_batched_tokens`` forward pass, CUDA graphs, the CUDA context and NCCL buffers) — an assumption, stated in
  every report; exact mode needs none.

Hybrids (a family with attention layers) are priced with :mod:`ghost_vllm.planner.hybrid` — vLLM's page alignment,
KV-cache groups and the attention KV of a sequence of ``max_model_len`` tokens (default
:data:`DEFAULT_HYBRID_CONTEXT`) on ``platform``, prefix caching on (vLLM's default for hybrids) unless turned off —
in exact mode at TP 1 (what :mod:`~ghost_vllm.planner.hybrid` models and tests against engines).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ghost_vllm.errors import RecipeError
from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.planner.arith import block_math
from ghost_vllm.planner.models import PlanModel, weight_parameters
from ghost_vllm.planner.quality import measured_quality
from ghost_vllm.units import DTYPE_BYTES, format_size, plugin_state_dtypes, serving_dtypes, state_dtype

__all__ = ["PlanSettings", "PlanRow", "plan_variants", "plan_target", "format_plan", "check_holds_a_sequence", "DEFAULT_OVERHEAD",
           "VLLM_PAD_VOCAB"]

DEFAULT_OVERHEAD = 2 * 2**30  # estimate mode: activations + CUDA graphs + context, per GPU (see module doc)
DEFAULT_HYBRID_CONTEXT = 4096  # hybrids: tokens per sequence when --max-model-len is not given
VLLM_PAD_VOCAB = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE for embeddings and the LM head


@dataclass(frozen=True)
class PlanSettings:
    cache_memory: Optional[int] = None  # exact mode: kv_cache_memory_bytes per worker
    gpu_memory: Optional[int] = None  # estimate mode: memory of one GPU
    gpu_memory_utilization: float = 0.9
    overhead: int = DEFAULT_OVERHEAD
    dtype: str = "auto"  # weights and conv state; auto = the checkpoint's, float32 → bfloat16 (vLLM's GPU rule)
    mamba_ssm_cache_dtype: str = "auto"
    state_dtype: str = "auto"  # the plugin's SSM state: auto = the checkpoint's ghost_state_dtype, else vLLM's; int8
    tensor_parallel_size: int = 1
    max_model_len: Optional[int] = None  # recorded; a pure Mamba2 state does not grow with context
    multiple_of: int = 1  # what-if variants: N' rounded as `ghost-vllm prune --multiple-of` does
    padded: bool = False  # price stock vLLM (pages padded to the largest) instead of the plugin's exact pages
    results: Optional[Path] = None  # benchmarks/results for measured quality
    platform: str = "cuda"  # hybrids: whose block-size alignment (cuda | cpu)
    prefix_caching: Optional[bool] = None  # hybrids: None = vLLM's default (on); on = "align" Mamba cache mode

    def __post_init__(self) -> None:
        if (self.cache_memory is None) == (self.gpu_memory is None):
            raise RecipeError("plan: give exactly one of --cache-memory BYTES (exact, vLLM's kv_cache_memory_bytes) "
                              "or --gpu-memory SIZE (estimate)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise RecipeError(f"--gpu-memory-utilization {self.gpu_memory_utilization}: must be in (0, 1]")
        if self.dtype not in ("auto", *DTYPE_BYTES):
            raise RecipeError(f"--dtype {self.dtype!r}: use auto, {', '.join(DTYPE_BYTES)}")
        if self.mamba_ssm_cache_dtype not in ("auto", *DTYPE_BYTES):
            raise RecipeError(f"--mamba-ssm-cache-dtype {self.mamba_ssm_cache_dtype!r}: use auto, {', '.join(DTYPE_BYTES)}")
        if self.state_dtype not in ("auto", *plugin_state_dtypes()):
            raise RecipeError(f"--state-dtype {self.state_dtype!r}: use auto (the checkpoint's) or "
                              f"{', '.join(plugin_state_dtypes())} (the plugin's SSM-state caches; "
                              f"float32/bfloat16/float16 are --mamba-ssm-cache-dtype)")
        if self.state_dtype != "auto" and self.mamba_ssm_cache_dtype != "auto":
            raise RecipeError(f"--state-dtype {self.state_dtype} with --mamba-ssm-cache-dtype "
                              f"{self.mamba_ssm_cache_dtype}: give one of them")
        if self.tensor_parallel_size < 1:
            raise RecipeError(f"--tensor-parallel-size {self.tensor_parallel_size}: must be >= 1")
        if self.overhead < 0:
            raise RecipeError(f"--overhead {self.overhead}: must be >= 0")
        if self.platform not in ("cuda", "cpu"):
            raise RecipeError(f"--platform {self.platform!r}: use cuda or cpu")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise RecipeError(f"--max-model-len {self.max_model_len}: must be >= 1")

    @property
    def mode(self) -> str:
        return "exact" if self.cache_memory is not None else "estimate"

    def model_dtype(self, model: PlanModel) -> str:
        return serving_dtypes(model.config_dtype, self.dtype)[0]

    def ssm_dtype(self, model: PlanModel) -> str:
        if self.state_dtype != "auto":
            return self.state_dtype
        if self.mamba_ssm_cache_dtype == "auto" and model.state_dtype is not None:
            return model.state_dtype  # the checkpoint's plugin-cached state (ghost_state_dtype)
        return serving_dtypes(model.config_dtype, self.dtype, self.mamba_ssm_cache_dtype)[1]


@dataclass
class PlanRow:
    model: str
    variant: str  # "as is" | "what-if κ=0.5" | "target 1024 seqs"
    sparsity: float  # fraction of state channels removed vs the original N (channel-weighted over layers)
    state_sizes: list[int]
    dtype: str
    ssm_dtype: str
    tensor_parallel_size: int
    mode: str
    conv_bytes_per_sequence: int
    ssm_bytes_per_sequence: int
    bytes_per_sequence: int  # per worker
    bytes_per_block: int  # Σ pages (or L × largest page when padded)
    cache_memory_bytes: int  # per worker
    num_blocks: int  # vLLM's num_gpu_blocks
    concurrent_sequences: int  # num_blocks - 1 (the null block)
    max_num_seqs: int  # the largest --max-num-seqs that starts (full CUDA graphs: <= num_blocks)
    weight_bytes: Optional[int] = None  # estimate mode, per worker
    quality: Optional[dict] = None  # measured, else None
    notes: list[str] = field(default_factory=list)

    @property
    def state_size(self) -> int:
        return max(self.state_sizes)

    context_tokens: Optional[int] = None  # hybrids: the sequence length priced (attention KV grows with it)
    blocks_per_sequence: Optional[int] = None  # hybrids: block ids one such sequence holds

    def to_dict(self) -> dict:
        d = asdict(self) | {"state_size": self.state_size}
        return {k: v for k, v in d.items() if v is not None or k not in ("context_tokens", "blocks_per_sequence")}


def _cache_memory(model: PlanModel, sizes: Sequence[int], s: PlanSettings) -> tuple[int, Optional[int]]:
    if s.cache_memory is not None:
        return s.cache_memory, None
    params = weight_parameters(model.config, tuple(sizes), VLLM_PAD_VOCAB)
    weights = -(-params * DTYPE_BYTES[s.model_dtype(model)] // s.tensor_parallel_size)
    return int(s.gpu_memory * s.gpu_memory_utilization) - weights - s.overhead, weights


def _hybrid_row(model: PlanModel, variant: str, sizes: Sequence[int], method: str, s: PlanSettings) -> PlanRow:
    from ghost_vllm.planner.hybrid import hybrid_bytes, sequences_in

    if s.mode != "exact":
        raise RecipeError(f"{model.name}: a hybrid is planned in exact mode only; give --cache-memory BYTES (vLLM's "
                          f"kv_cache_memory_bytes; the estimate mode counts pure Mamba2 weights)")
    if s.tensor_parallel_size != 1:
        raise RecipeError(f"{model.name}: hybrid page alignment is modelled at --tensor-parallel-size 1; plan one "
                          f"rank's memory at TP 1 or use a pure Mamba2 model")
    if s.padded:
        raise RecipeError("--stock-padding: prices per-layer pure Mamba2 checkpoints; a hybrid has one state size")
    context = s.max_model_len or DEFAULT_HYBRID_CONTEXT
    mode = "none" if s.prefix_caching is False else "align"
    per = hybrid_bytes(model.config, context, dtype=s.model_dtype(model), ssm_dtype=s.mamba_ssm_cache_dtype,
                       state_size=int(sizes[0]), platform=s.platform, mamba_cache_mode=mode)
    lay = per.layout
    blocks = lay.num_blocks(s.cache_memory)
    note = (f"hybrid: {lay.attention_layers} attention + {lay.mamba_layers} Mamba layers, block {lay.block_size} "
            f"tokens ({s.platform}), prefix caching {'on' if mode == 'align' else 'off'}; a {context:,}-token sequence "
            f"holds {per.blocks} blocks ({lay.attention_groups} attention group(s) × {-(-context // lay.block_size)} "
            f"+ {lay.mamba_groups} Mamba group(s) × {per.layout.mamba_blocks // lay.mamba_groups})")
    return PlanRow(
        model=model.name, variant=variant, sparsity=round(1 - int(sizes[0]) / model.original_state_size, 6),
        state_sizes=list(sizes), dtype=lay.dtype, ssm_dtype=lay.ssm_dtype, tensor_parallel_size=1, mode=s.mode,
        conv_bytes_per_sequence=per.conv_bytes, ssm_bytes_per_sequence=per.ssm_bytes,
        bytes_per_sequence=per.vllm_bytes, bytes_per_block=lay.bytes_per_block, cache_memory_bytes=s.cache_memory,
        num_blocks=blocks, concurrent_sequences=sequences_in(s.cache_memory, per), max_num_seqs=blocks,
        quality=None, notes=[note], context_tokens=context, blocks_per_sequence=per.blocks,
    )


def _row(model: PlanModel, variant: str, sizes: Sequence[int], method: str, s: PlanSettings) -> PlanRow:
    if model.hybrid:
        if s.state_dtype != "auto" or model.state_dtype is not None:
            raise RecipeError(f"{model.name}: the plugin's SSM-state caches ({', '.join(plugin_state_dtypes())}) "
                              f"are served for pure Mamba2 models only; plan this hybrid with --mamba-ssm-cache-dtype")
        return _hybrid_row(model, variant, sizes, method, s)
    ranks = model.state_ranks if tuple(sizes) == tuple(model.state_sizes) else None  # what-ifs are channel cuts
    bm = block_math(InProjLayout.from_config(model.config), sizes, s.model_dtype(model), s.ssm_dtype(model),
                    s.tensor_parallel_size, s.padded, ranks)
    memory, weights = _cache_memory(model, sizes, s)
    blocks = max(memory, 0) // bm.bytes_per_block
    L, N = len(sizes), model.original_state_size
    # the measured figures are for vLLM's own state dtypes; a plugin-cached state's cost is `ghost-vllm eval --state-dtype`
    q = None if state_dtype(s.ssm_dtype(model)).plugin_cached else measured_quality(model.origin, method, sizes, s.results,
                                                                   model.calibration if model.pruned else None)
    return PlanRow(
        model=model.name, variant=variant, sparsity=round(1 - sum(ranks or sizes) / (L * N), 6),
        state_sizes=list(ranks or sizes),
        dtype=s.model_dtype(model), ssm_dtype=s.ssm_dtype(model), tensor_parallel_size=s.tensor_parallel_size,
        mode=s.mode, conv_bytes_per_sequence=sum(bm.conv_bytes), ssm_bytes_per_sequence=sum(bm.ssm_bytes),
        bytes_per_sequence=bm.bytes_per_sequence, bytes_per_block=bm.bytes_per_block, cache_memory_bytes=memory,
        num_blocks=blocks, concurrent_sequences=max(blocks - 1, 0), max_num_seqs=blocks, weight_bytes=weights,
        quality=q.to_dict() if q else None,
    )


def _kept(n: int, sparsity: float, multiple_of: int) -> int:
    from ghost_vllm.selection import kept_count

    return kept_count(n, sparsity, min(multiple_of, n))


def plan_variants(model: PlanModel, settings: PlanSettings, sparsities: Optional[Sequence[float]] = None) -> list[PlanRow]:
    """The model as it stands, or (``sparsities``, dense models only) uniform GHOST what-ifs at each κ."""
    if not sparsities:
        method = (model.method or "dense") + ("+refit" if model.refit else "")
        label = f"as is ({method}, {model.allocation})" if model.pruned else "as is (dense)"
        return [_row(model, label, model.state_sizes, method, settings)]
    _check_dense(model, "--sparsity")
    rows = []
    for k in sparsities:
        if not 0 <= k < 1:
            raise RecipeError(f"--sparsity {k}: must be in [0, 1)")
        n = model.original_state_size if k == 0 else _kept(model.original_state_size, k, settings.multiple_of)
        L = len(model.state_sizes)
        rows.append(_row(model, "dense" if k == 0 else f"GHOST κ={k:g}", [n] * L, "dense" if k == 0 else "ghost",
                         settings))
    return rows


def _check_dense(model: PlanModel, flag: str) -> None:
    if model.pruned:
        raise RecipeError(f"{flag}: {model.name} is already pruned ({model.method}, N' {max(model.state_sizes)} of "
                          f"{model.original_state_size}); plan what-ifs on the dense model it came from")


def plan_target(model: PlanModel, settings: PlanSettings, target: int) -> Optional[PlanRow]:
    """The least uniform sparsity (largest N', in steps of ``multiple_of``) whose state memory holds ``target``
    concurrent sequences; None when even the smallest N' does not."""
    _check_dense(model, "--target-seqs")
    if target < 1:
        raise RecipeError(f"--target-seqs {target}: must be >= 1")
    N, L, step = model.original_state_size, len(model.state_sizes), min(settings.multiple_of, model.original_state_size)
    for n in [N, *range((N - 1) // step * step, 0, -step)]:
        row = _row(model, f"target {target:,} seqs", [n] * L, "dense" if n == N else "ghost", settings)
        if row.concurrent_sequences >= target:
            return row
    return None


def check_holds_a_sequence(model: PlanModel, rows: list[PlanRow], settings: PlanSettings) -> None:
    """Bad input when no planned variant holds even one sequence (one line, naming the memory and the fix)."""
    if not rows or any(r.concurrent_sequences > 0 for r in rows):
        return
    r = min(rows, key=lambda r: r.bytes_per_block * (r.blocks_per_sequence or 1))
    if r.blocks_per_sequence is not None:
        need = (1 + r.blocks_per_sequence) * r.bytes_per_block
        raise RecipeError(f"{model.name}: {r.cache_memory_bytes:,} B of cache memory holds no sequence of "
                          f"{r.context_tokens:,} tokens (vLLM needs one null block + {r.blocks_per_sequence} blocks of "
                          f"{r.bytes_per_block:,} B); give at least {need:,} B or a shorter --max-model-len")
    if r.cache_memory_bytes <= 0:
        raise RecipeError(f"{model.name}: --gpu-memory {format_size(settings.gpu_memory)} × "
                          f"{settings.gpu_memory_utilization:g} leaves no cache memory after the weights "
                          f"({format_size(r.weight_bytes or 0)}) and the {format_size(settings.overhead)} allowance; "
                          f"use a larger GPU or --tensor-parallel-size")
    raise RecipeError(f"{model.name}: {r.cache_memory_bytes:,} B of cache memory holds no sequence (vLLM needs 2 "
                      f"blocks of {r.bytes_per_block:,} B: one null block + one per sequence); give at least "
                      f"{2 * r.bytes_per_block:,} B")


def _quality_text(row: PlanRow) -> str:
    q = row.quality
    if q is None:
        return "not measured"
    from ghost_vllm.planner.quality import Quality

    return Quality(q["metric"], q["dense"], q["value"], q["source"]).text(row.sparsity == 0)


def _head(model: PlanModel) -> str:
    if model.hybrid:
        from ghost_vllm.families import family_for_config

        family = family_for_config(model.config)
        lay = family.layout(model.config)
        what = (f"{family.name} hybrid, {len(family.attention_layers(model.config))} attention + "
                f"{len(family.mamba_layers(model.config))} Mamba layers, n_groups {lay.n_groups}, {lay.num_heads} heads "
                f"× {lay.head_dim}")
    else:
        lay = InProjLayout.from_config(model.config)
        what = (f"Mamba2, {model.config['num_hidden_layers']} layers, n_groups {lay.n_groups}, {lay.num_heads} heads × "
                f"{lay.head_dim}")
    return (f"{model.name}: {what}, N {model.original_state_size}" + (f" (pruned: {model.method}, N' per layer "
            f"{' '.join(map(str, model.state_sizes))})" if model.pruned else ""))


def format_plan(model: PlanModel, rows: list[PlanRow], settings: PlanSettings, unreachable: Optional[int] = None) -> str:
    r0 = rows[0] if rows else None
    head = _head(model)
    lines = [head]
    if settings.mode == "exact":
        lines.append(f"  exact mode: {settings.cache_memory:,} B ({format_size(settings.cache_memory)}) of state cache "
                     f"per worker (vLLM kv_cache_memory_bytes)")
    else:
        lines.append(f"  estimate mode: {format_size(settings.gpu_memory)} × {settings.gpu_memory_utilization:g} − "
                     f"weights at {r0.dtype if r0 else settings.dtype} / TP {settings.tensor_parallel_size} − "
                     f"{format_size(settings.overhead)} allowance (activations, CUDA graphs, context; assumed)")
    if r0 and r0.blocks_per_sequence is not None:
        lines.append(f"  state dtypes: conv and KV {r0.dtype}, SSM {r0.ssm_dtype}; {r0.notes[0]}; state B/seq below = "
                     f"the blocks that sequence holds × block B (padding and attention KV included)")
    elif r0:
        scales = (f" + a float32 scale per head (the plugin's {r0.ssm_dtype} state)"
                  if state_dtype(r0.ssm_dtype).scale_bytes_per_head else "")
        lines.append(f"  state dtypes: conv {r0.dtype}, SSM {r0.ssm_dtype}{scales}; tensor parallel "
                     f"{settings.tensor_parallel_size}; "
                     f"one Mamba block = one sequence's state in every layer = "
                     + ("L × largest page (stock vLLM padding)" if settings.padded else "Σ_l page_l"))
    lines.append("  | variant | N' | state B/seq (conv + SSM) | block B | cache B | Mamba blocks | concurrent seqs | "
                 "largest --max-num-seqs | measured quality |")
    lines.append("  |---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = str(r.state_size) if len(set(r.state_sizes)) == 1 else "/".join(map(str, r.state_sizes))
        lines.append(f"  | {r.variant} | {n} | {r.bytes_per_sequence:,} ({r.conv_bytes_per_sequence:,} + "
                     f"{r.ssm_bytes_per_sequence:,}) | {r.bytes_per_block:,} | {r.cache_memory_bytes:,} | "
                     f"{r.num_blocks:,} | {r.concurrent_sequences:,} | {r.max_num_seqs:,} | {_quality_text(r)} |")
    if unreachable is not None:
        lines.append(f"  target {unreachable:,} sequences: not reachable by pruning alone (even N' = "
                     f"{min(settings.multiple_of, model.original_state_size)} holds fewer); add memory or GPUs")
    if r0 and r0.blocks_per_sequence is not None:
        lines.append("  blocks = cache // block; vLLM keeps one null block, so concurrent = (blocks − 1) // blocks per "
                     "sequence; with full CUDA graphs start-up needs max_num_seqs ≤ blocks (vllm#49064)")
    else:
        lines.append("  blocks = cache // block; vLLM keeps one null block, so concurrent = blocks − 1; with full CUDA "
                     "graphs start-up needs max_num_seqs ≤ blocks (vllm#49064)")
    return "\n".join(lines)
