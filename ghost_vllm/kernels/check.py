"""vLLM's Mamba2 GPU kernels against the project's reference scan, at one (heads, groups, state size) shape.

One :class:`KernelCase` runs what a Mamba2 mixer runs in vLLM (``vllm/model_executor/layers/mamba/mamba_mixer2.py``,
same arguments and tensor layouts):

* prefill: ``causal_conv1d_fn`` (varlen, channel-last x, conv cache lines picked by ``cache_indices``, initial conv
  state for some sequences) then ``mamba_chunk_scan_combined_varlen`` (chunk metadata as vLLM's
  ``compute_varlen_chunk_metadata`` builds it: chunks split at physical chunk boundaries and at sequence ends, so a
  chunk boundary falls inside and between sequences; initial SSM states for some sequences; dt bias + softplus);
* decode: ``causal_conv1d_update`` and ``selective_state_update`` on one token per sequence, reading and writing the
  cache lines named by state indices, with padded entries pointing at the null block (which must stay untouched).

The reference is :func:`ghost_vllm.mamba.reference.ssm_scan` in float64 and a direct depthwise convolution. Every
compared tensor must agree to ``tol`` (relative to its largest magnitude). ``reference_state_size`` < N feeds the
reference a state of a different size than the kernels (the last channels of B and C removed): the check must fail.

Shapes (T = tokens of the batch, b = sequences, H = heads, P = head_dim, G = n_groups, N = state size, K = conv width,
dim = H·P + 2·G·N conv channels, L = cache lines including the null block 0).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F

from ghost_vllm.mamba.reference import ssm_scan

__all__ = ["KernelCase", "CaseResult", "MixerParams", "PrefillBatch", "chunk_metadata", "conv_metadata",
           "mixer_prefill", "mixer_decode", "run_case"]


@dataclass(frozen=True)
class KernelCase:
    label: str  # where the shape comes from, e.g. "reference adaptive κ0.5 layer 2, TP 2"
    num_heads: int  # on this rank
    head_dim: int
    n_groups: int  # on this rank
    state_size: int
    seqlens: tuple[int, ...] = (5, 23, 36)  # prefill lengths; with chunk 16: boundaries inside and across sequences
    initial: tuple[bool, ...] = (False, True, True)  # which sequences start from a cached state
    chunk_size: int = 16
    conv_kernel: int = 4

    @property
    def conv_dim(self) -> int:
        return self.num_heads * self.head_dim + 2 * self.n_groups * self.state_size


@dataclass
class CaseResult:
    case: KernelCase
    errors: dict[str, float] = field(default_factory=dict)  # relative max error per compared tensor
    seconds: float = 0.0
    ssu_launch: tuple[int, int] = (0, 0)  # (BLOCK_SIZE_M, num_warps) the SSU kernel ran with

    def ok(self, tol: float) -> bool:
        return bool(self.errors) and all(math.isfinite(e) and e <= tol for e in self.errors.values())

    def to_json(self) -> dict:
        return {**asdict(self.case), "errors": self.errors, "seconds": round(self.seconds, 3),
                "ssu_launch": list(self.ssu_launch)}


def chunk_metadata(seqlens: list[int], chunk_size: int) -> tuple[list[int], list[int], list[int]]:
    """(cu_chunk_seqlens [nchunks+1], last_chunk_indices [b], seq_idx [nchunks]): logical chunks that never cross a
    sequence end or a physical chunk boundary (position in the whole batch a multiple of ``chunk_size``)."""
    cu, seq_idx, last = [0], [], []
    pos = 0
    for b, n in enumerate(seqlens):
        end = pos + n
        while pos < end:
            take = min(chunk_size - pos % chunk_size, end - pos)
            cu.append(cu[-1] + take)
            seq_idx.append(b)
            pos += take
        last.append(len(seq_idx) - 1)
    return cu, last, seq_idx


def conv_metadata(seqlens: list[int], device: str, pad_slot_id: int) -> SimpleNamespace:
    """The prefill conv metadata the engine hands ``causal_conv1d_fn`` (as vLLM's ``compute_causal_conv1d_metadata``
    builds it, BLOCK_M 8): which sequence and which 8-token block each program handles."""
    block_m = 8
    nums = [-(-n // block_m) for n in seqlens]
    mlist = [b for b, k in enumerate(nums) for _ in range(k)]
    offsets = [i for k in nums for i in range(k)]
    size = max(1024, len(mlist)) * 2
    batch_ptr = torch.full((size,), pad_slot_id, dtype=torch.int32, device=device)
    offset_ptr = torch.full((size,), pad_slot_id, dtype=torch.int32, device=device)
    batch_ptr[:len(mlist)] = torch.tensor(mlist, dtype=torch.int32)
    offset_ptr[:len(mlist)] = torch.tensor(offsets, dtype=torch.int32)
    entry = {"nums": torch.tensor(nums), "tot": sum(nums), "mlist": torch.tensor(mlist, dtype=torch.int32),
             "mlist_len": len(mlist), "offsetlist": torch.tensor(offsets, dtype=torch.int32), "batch_ptr": batch_ptr,
             "token_chunk_offset_ptr": offset_ptr}
    return SimpleNamespace(nums_dict={block_m: entry}, batch_ptr=batch_ptr, token_chunk_offset_ptr=offset_ptr)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _conv_ref(xbc: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, init: torch.Tensor):
    """Causal depthwise conv + SiLU of one sequence. xbc [T, dim], w [dim, K], init [K-1, dim] → (out [T, dim],
    new conv state [K-1, dim] = the last K-1 inputs)."""
    K = w.shape[1]
    full = torch.cat([init, xbc], dim=0)  # [K-1+T, dim]
    out = F.conv1d(full.T[None], w[:, None, :], bias, groups=w.shape[0])[0].T  # [T, dim]
    return F.silu(out), full[-(K - 1):]


@dataclass(frozen=True)
class MixerParams:
    """One rank's Mamba2 mixer parameters as vLLM holds them, and its shape."""

    conv_w: torch.Tensor  # [dim, K]
    conv_b: torch.Tensor  # [dim]
    A: torch.Tensor  # [H], negative
    D: torch.Tensor  # [H]
    dt_bias: torch.Tensor  # [H]
    head_dim: int
    n_groups: int
    state_size: int

    def split(self, xbc: torch.Tensor):
        """[..., dim] → x [..., H, P], B [..., G, N], C [..., G, N] (contiguous)."""
        H, P, G, N = self.A.numel(), self.head_dim, self.n_groups, self.state_size
        x, B, C = torch.split(xbc, [H * P, G * N, G * N], dim=-1)
        lead = xbc.shape[:-1]
        return (x.reshape(*lead, H, P).contiguous(), B.reshape(*lead, G, N).contiguous(),
                C.reshape(*lead, G, N).contiguous())


@dataclass(frozen=True)
class PrefillBatch:
    """A prefill batch's metadata as vLLM's Mamba2 metadata builder makes it (built once per batch)."""

    seqlens: tuple[int, ...]
    query_start_loc: torch.Tensor  # [b+1] int32
    lines: torch.Tensor  # [b] int32, each sequence's cache line
    has_initial_state: torch.Tensor  # [b] bool
    chunk_size: int
    cu_chunk_seqlens: torch.Tensor
    last_chunk_indices: torch.Tensor
    seq_idx: torch.Tensor
    conv_meta: SimpleNamespace

    @classmethod
    def build(cls, seqlens, lines, has_initial_state, chunk_size: int, device: str, pad_slot_id: int):
        i32 = dict(dtype=torch.int32, device=device)
        cu, last, seq_idx = chunk_metadata(list(seqlens), chunk_size)
        qsl = torch.tensor([0, *torch.tensor(list(seqlens)).cumsum(0).tolist()], **i32)
        return cls(tuple(seqlens), qsl, torch.as_tensor(lines).to(**i32),
                   torch.as_tensor(has_initial_state, dtype=torch.bool).to(device), chunk_size,
                   torch.tensor(cu, **i32), torch.tensor(last, **i32), torch.tensor(seq_idx, **i32),
                   conv_metadata(list(seqlens), device, pad_slot_id))


def mixer_prefill(ops, p: MixerParams, xbc: torch.Tensor, dt_raw: torch.Tensor, conv_cache: torch.Tensor,
                  ssm_cache: torch.Tensor, batch: PrefillBatch):
    """What ``MambaMixer2`` runs for a prefill batch: conv (channel-last x, the [L, K-1, dim] conv cache handed over
    transposed) then the chunked SSD with initial states from the cache and dt bias + softplus; the final states are
    written back to the sequences' lines. xbc [T, dim], dt_raw [T, H] → (conv out [T, dim], y [T, H, P],
    final states [b, H, P, N])."""
    conv_out = ops.causal_conv1d_fn(xbc.transpose(0, 1), p.conv_w, p.conv_b, conv_states=conv_cache.transpose(-1, -2),
                                    query_start_loc=batch.query_start_loc, cache_indices=batch.lines,
                                    has_initial_state=batch.has_initial_state, activation="silu",
                                    metadata=batch.conv_meta).transpose(0, 1)
    x, B, C = p.split(conv_out)
    lines = batch.lines.long()
    init = torch.where(batch.has_initial_state[:, None, None, None], ssm_cache[lines], 0.0)
    y = torch.empty(*x.shape, device=x.device, dtype=x.dtype)
    final = ops.mamba_chunk_scan_combined_varlen(
        x, dt_raw, p.A, B, C, chunk_size=batch.chunk_size, D=p.D, z=None, dt_bias=p.dt_bias, seq_idx=batch.seq_idx,
        cu_seqlens=batch.query_start_loc, cu_chunk_seqlens=batch.cu_chunk_seqlens,
        last_chunk_indices=batch.last_chunk_indices, initial_states=init, dt_softplus=True,
        dt_limit=(0.0, float("inf")), out=y, state_dtype=ssm_cache.dtype)
    ssm_cache[lines] = final.to(ssm_cache.dtype)
    return conv_out, y, final


def mixer_decode(ops, p: MixerParams, xbc: torch.Tensor, dt_raw: torch.Tensor, conv_cache: torch.Tensor,
                 ssm_cache: torch.Tensor, slots: torch.Tensor):
    """What ``MambaMixer2`` runs for one decode token per sequence: conv update and the state update in place on
    the cache lines ``slots`` (entries equal to the null block are padding). xbc [b, dim], dt_raw [b, H] →
    (conv out [b, dim], y [b, H, P])."""
    P, N = p.head_dim, p.state_size
    conv_out = ops.causal_conv1d_update(xbc.clone(), conv_cache.transpose(-1, -2), p.conv_w, p.conv_b, "silu",
                                        conv_state_indices=slots)
    x, B, C = p.split(conv_out)
    y = torch.zeros(*x.shape, device=x.device, dtype=x.dtype)
    ops.selective_state_update(
        ssm_cache, x, dt_raw[:, :, None].expand(-1, -1, P), p.A[:, None, None].expand(-1, P, N), B, C,
        p.D[:, None].expand(-1, P), p.dt_bias[:, None].expand(-1, P), dt_softplus=True, state_batch_indices=slots,
        dst_state_batch_indices=slots, out=y)
    return conv_out, y


def run_case(ops, case: KernelCase, device: str = "cpu", seed: int = 0,
             reference_state_size: Optional[int] = None) -> CaseResult:
    """Run the four kernels on random inputs of ``case``'s shape and compare them with the reference."""
    g = torch.Generator().manual_seed(seed)
    H, P, N, K = case.num_heads, case.head_dim, case.state_size, case.conv_kernel
    dim, b, T = case.conv_dim, len(case.seqlens), sum(case.seqlens)
    n_ref = N if reference_state_size is None else reference_state_size
    f32 = dict(dtype=torch.float32)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, **f32) * scale).to(device)

    # weights (as vLLM holds them per rank): conv [dim, K] + bias, A [H] < 0, D [H], dt_bias [H]
    conv_w, conv_b = rand(dim, K, scale=0.5), rand(dim, scale=0.1)
    A = -torch.exp(rand(H, scale=0.5))
    D, dt_bias = rand(H), rand(H, scale=0.5)
    params = MixerParams(conv_w, conv_b, A, D, dt_bias, P, case.n_groups, N)
    # cache: L lines, line 0 = the null block; vLLM's conv cache is [L, K-1, dim], handed over transposed
    L = 2 * b + 2
    conv_cache = rand(L, K - 1, dim)
    ssm_cache = rand(L, H, P, N, scale=0.3)
    lines = torch.arange(2, 2 + b)  # the prefill sequences' cache lines
    conv_cache[0] = 0.0
    ssm_cache[0] = 0.0
    start = time.perf_counter()
    result = CaseResult(case)

    # ---- prefill -------------------------------------------------------------------------------------------------
    xbc = rand(T, dim)  # what in_proj hands the conv, [T, dim] (contiguous, channel-last for the kernel)
    dt_raw = rand(T, H, scale=0.5)
    batch = PrefillBatch.build(case.seqlens, lines, case.initial, case.chunk_size, device, int(ops.PAD_SLOT_ID))
    qsl = batch.query_start_loc.cpu()
    conv_before, ssm_before = conv_cache.clone(), ssm_cache.clone()
    conv_out, y_p, final = mixer_prefill(ops, params, xbc, dt_raw, conv_cache, ssm_cache, batch)

    # reference, per sequence, float64
    ref_conv, ref_y, ref_final, ref_conv_state = [], [], [], []
    A64, D64 = A.double().cpu(), D.double().cpu()
    for i, (s, e) in enumerate(zip(qsl[:-1].tolist(), qsl[1:].tolist())):
        line = int(lines[i])
        init_c = conv_before[line].double().cpu() if case.initial[i] else torch.zeros(K - 1, dim, dtype=torch.float64)
        out, new_c = _conv_ref(xbc[s:e].double().cpu(), conv_w.double().cpu(), conv_b.double().cpu(), init_c)
        ref_conv.append(out)
        ref_conv_state.append(new_c)
        xs, Bs, Cs = params.split(out)
        Bs, Cs = Bs[..., :n_ref], Cs[..., :n_ref]
        dts = F.softplus(dt_raw[s:e].double().cpu() + dt_bias.double().cpu())
        h0 = ssm_before[line].double().cpu()[..., :n_ref] if case.initial[i] else None
        y, h = ssm_scan(xs[None], dts[None], A64, Bs[None], Cs[None], D64, initial_state=None if h0 is None
                        else h0[None])
        ref_y.append(y[0])
        ref_final.append(h[0])
    result.errors["conv1d_fn.out"] = _rel(conv_out, torch.cat(ref_conv))
    result.errors["conv1d_fn.state"] = _rel(conv_cache[lines.to(device)], torch.stack(ref_conv_state))
    result.errors["ssd.out"] = _rel(y_p, torch.cat(ref_y))
    result.errors["ssd.final_state"] = _rel(final, torch.stack(ref_final))

    # ---- decode: one token per sequence; two padded entries point at the null block ----------------------------
    null = int(ops.NULL_BLOCK_ID)
    slots = torch.tensor([int(lines[0]), null, *[int(v) for v in lines[1:]], null], dtype=torch.int32)
    nb = len(slots)
    real = slots != null
    xbc_d = rand(nb, dim)
    dt_d_raw = rand(nb, H, scale=0.5)
    conv_before, ssm_before = conv_cache.clone(), ssm_cache.clone()
    launch = ops.mamba_ssm.try_get_optimal_ssm_config(P, N, nb, H, "float32", False)
    result.ssu_launch = (int(launch[0]), int(launch[1]))
    conv_d, y_d = mixer_decode(ops, params, xbc_d, dt_d_raw, conv_cache, ssm_cache, slots.to(device))

    ref_cd, ref_yd, ref_hd, ref_cs = [], [], [], []
    for j in torch.nonzero(real).flatten().tolist():
        line = int(slots[j])
        out, new_c = _conv_ref(xbc_d[j:j + 1].double().cpu(), conv_w.double().cpu(), conv_b.double().cpu(),
                               conv_before[line].double().cpu())
        ref_cd.append(out[0])
        ref_cs.append(new_c)
        xs, Bs, Cs = params.split(out)
        dts = F.softplus(dt_d_raw[j:j + 1].double().cpu() + dt_bias.double().cpu())
        y, h = ssm_scan(xs[None], dts[None], A64, Bs[None, ..., :n_ref], Cs[None, ..., :n_ref], D64,
                        initial_state=ssm_before[line].double().cpu()[None, ..., :n_ref])
        ref_yd.append(y[0, 0])
        ref_hd.append(h[0])
    real_d = real.to(device)
    result.errors["conv1d_update.out"] = _rel(conv_d[real_d], torch.stack(ref_cd))
    result.errors["conv1d_update.state"] = _rel(conv_cache[slots[real].long().to(device)], torch.stack(ref_cs))
    result.errors["ssu.out"] = _rel(y_d[real_d], torch.stack(ref_yd))
    result.errors["ssu.state"] = _rel(ssm_cache[slots[real].long().to(device)], torch.stack(ref_hd))
    # the null block is never read into a real sequence nor written
    untouched = torch.equal(conv_cache[null], conv_before[null]) and torch.equal(ssm_cache[null], ssm_before[null])
    result.errors["null_block.changed"] = 0.0 if untouched else float("inf")
    if device != "cpu":
        torch.cuda.synchronize()
    result.seconds = time.perf_counter() - start
    return result
