"""Triton kernels for the int8 SSM-state cache (:mod:`ghost_vllm.mamba.int8_state`, per-head scales).

Three kernels, each with a thin torch wrapper; they import only torch and triton (no vLLM) and run on CUDA tensors
compiled, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``):

* :func:`int8_state_update` — one decode step of Mamba2's selective state update that reads a sequence's int8 state
  and per-head scale from its cache line, updates it in float32 registers, writes ``y`` and stores the new state back
  as int8 + scale in the same pass (no float32 copy of the batch's states is ever in memory);
* :func:`int8_dequantize_states` — cache lines → float32 states (the prefill boundary: initial states in);
* :func:`int8_quantize_states_` — float32 states → cache lines (the prefill boundary: final states out).

Cache layout: ``state_q [L, H, P, N]`` int8 and ``state_scale [L, H]`` float32 (L cache lines, line
``null_block_id`` being vLLM's null block). The quantization is the one of :func:`ghost_vllm.mamba.int8_state.quantize`
at ``"head"`` granularity::

    amax  = max |h| over the head's P×N tile
    scale = amax / 127
    q     = clamp(round_half_even(h · (127 / amax)), −127, 127)      (0 where amax = 0)

One program covers one (sequence, head): the scale needs the amax of the whole P×N tile, so the tile is held in
registers at once (``BLOCK_P`` / ``BLOCK_N`` = next powers of 2 ≥ P / N, masked). Entries of the index vector equal
to ``null_block_id`` (padding) read and write no cache line.

Rounding, portably (no libdevice ``rint``, which the interpreter lacks): for ``|v| ≤ 2**22``, ``v + 1.5·2**23`` lies in
``[2**23, 2**24)`` where float32's spacing is exactly 1, so the addition itself rounds ``v`` to an integer — half to
even, IEEE's default mode — and subtracting ``1.5·2**23`` again is exact. ``v`` is clamped to ±127 *before* the trick:
that keeps it in range, equals clamping after rounding (127 is an integer), and puts a min/max between the product
``h · inv`` and the addition so a compiler cannot contract them into one FMA (which would round the unrounded product
and differ from torch's ``round(h * inv)`` at exact halves).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["int8_state_update", "int8_dequantize_states", "int8_quantize_states_", "ROUND_MAGIC"]

ROUND_MAGIC = 12582912.0  # 1.5 * 2**23: (v + M) - M == round_half_even(v) in float32 for |v| <= 2**22


@triton.jit
def _requantize_store(h, mask, q_ptrs, scale_ptr):
    """Quantize the float32 tile ``h`` (zeros where masked) per head and store codes + scale."""
    amax = tl.max(tl.max(tl.abs(h), axis=1), axis=0)
    inv = tl.where(amax > 0.0, 127.0 / tl.where(amax > 0.0, amax, 1.0), 0.0)  # 0 where amax = 0, no inf
    v = h * inv
    v = tl.minimum(tl.maximum(v, -127.0), 127.0)  # before rounding: keeps |v| small and blocks FMA contraction
    v = (v + 12582912.0) - 12582912.0  # round half to even (see the module docstring)
    tl.store(q_ptrs, v.to(tl.int8), mask=mask)
    tl.store(scale_ptr, amax / 127.0)


@triton.jit
def _int8_state_update_kernel(
    q_ptr, scale_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, idx_ptr, out_ptr,
    null_block_id, dim, dstate, heads_per_group,
    stride_q_line, stride_q_head, stride_q_dim, stride_q_dstate,
    stride_scale_line, stride_scale_head,
    stride_x_batch, stride_x_head, stride_x_dim,
    stride_dt_batch, stride_dt_head,
    stride_B_batch, stride_B_group, stride_B_dstate,
    stride_C_batch, stride_C_group, stride_C_dstate,
    stride_out_batch, stride_out_head, stride_out_dim,
    stride_idx,
    DT_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(axis=0)
    pid_h = tl.program_id(axis=1)
    line = tl.load(idx_ptr + pid_b * stride_idx).to(tl.int64)
    if line == null_block_id:  # padding: no cache line is read or written, out is left as it is
        return

    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < dim
    mask_n = offs_n < dstate
    mask = mask_p[:, None] & mask_n[None, :]

    q_base = q_ptr + line * stride_q_line + pid_h * stride_q_head
    q_ptrs = q_base + offs_p[:, None] * stride_q_dim + offs_n[None, :] * stride_q_dstate
    s_ptr = scale_ptr + line * stride_scale_line + pid_h * stride_scale_head
    h = tl.load(q_ptrs, mask=mask, other=0).to(tl.float32) * tl.load(s_ptr)

    dt = tl.load(dt_ptr + pid_b * stride_dt_batch + pid_h * stride_dt_head).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + pid_h).to(tl.float32)
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(tl.exp(dt) + 1.0), dt)
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    decay = tl.exp(A * dt)

    x = tl.load(x_ptr + pid_b * stride_x_batch + pid_h * stride_x_head + offs_p * stride_x_dim, mask=mask_p,
                other=0.0).to(tl.float32)
    group = pid_h // heads_per_group
    B = tl.load(B_ptr + pid_b * stride_B_batch + group * stride_B_group + offs_n * stride_B_dstate, mask=mask_n,
                other=0.0).to(tl.float32)
    C = tl.load(C_ptr + pid_b * stride_C_batch + group * stride_C_group + offs_n * stride_C_dstate, mask=mask_n,
                other=0.0).to(tl.float32)

    h = h * decay + (dt * x)[:, None] * B[None, :]  # masked entries stay 0: they do not move the amax
    y = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + pid_h).to(tl.float32) * x
    tl.store(out_ptr + pid_b * stride_out_batch + pid_h * stride_out_head + offs_p * stride_out_dim, y, mask=mask_p)
    _requantize_store(h, mask, q_ptrs, s_ptr)


@triton.jit
def _int8_dequantize_kernel(
    q_ptr, scale_ptr, idx_ptr, out_ptr,
    null_block_id, dim, dstate,
    stride_q_line, stride_q_head, stride_q_dim, stride_q_dstate,
    stride_scale_line, stride_scale_head,
    stride_out_batch, stride_out_head, stride_out_dim, stride_out_dstate,
    stride_idx,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(axis=0)
    pid_h = tl.program_id(axis=1)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_p[:, None] < dim) & (offs_n[None, :] < dstate)
    out_ptrs = (out_ptr + pid_b * stride_out_batch + pid_h * stride_out_head + offs_p[:, None] * stride_out_dim
                + offs_n[None, :] * stride_out_dstate)
    line = tl.load(idx_ptr + pid_b * stride_idx).to(tl.int64)
    if line == null_block_id:  # padding: zeros, the null block is not read
        tl.store(out_ptrs, tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32), mask=mask)
    else:
        q_ptrs = (q_ptr + line * stride_q_line + pid_h * stride_q_head + offs_p[:, None] * stride_q_dim
                  + offs_n[None, :] * stride_q_dstate)
        scale = tl.load(scale_ptr + line * stride_scale_line + pid_h * stride_scale_head)
        tl.store(out_ptrs, tl.load(q_ptrs, mask=mask, other=0).to(tl.float32) * scale, mask=mask)


@triton.jit
def _int8_quantize_kernel(
    h_ptr, q_ptr, scale_ptr, idx_ptr,
    null_block_id, dim, dstate,
    stride_h_batch, stride_h_head, stride_h_dim, stride_h_dstate,
    stride_q_line, stride_q_head, stride_q_dim, stride_q_dstate,
    stride_scale_line, stride_scale_head,
    stride_idx,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(axis=0)
    pid_h = tl.program_id(axis=1)
    line = tl.load(idx_ptr + pid_b * stride_idx).to(tl.int64)
    if line == null_block_id:  # padding: nothing is written
        return
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_p[:, None] < dim) & (offs_n[None, :] < dstate)
    h_ptrs = (h_ptr + pid_b * stride_h_batch + pid_h * stride_h_head + offs_p[:, None] * stride_h_dim
              + offs_n[None, :] * stride_h_dstate)
    h = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
    q_ptrs = (q_ptr + line * stride_q_line + pid_h * stride_q_head + offs_p[:, None] * stride_q_dim
              + offs_n[None, :] * stride_q_dstate)
    _requantize_store(h, mask, q_ptrs, scale_ptr + line * stride_scale_line + pid_h * stride_scale_head)


def _launch(P: int, N: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, num_warps): the whole head's tile in one program."""
    bp, bn = triton.next_power_of_2(P), triton.next_power_of_2(N)
    return bp, bn, 4 if bp * bn <= 4096 else 8 if bp * bn <= 16384 else 16


def _check_cache(state_q: torch.Tensor, state_scale: torch.Tensor, indices: torch.Tensor) -> tuple[int, ...]:
    if state_q.dtype != torch.int8 or state_q.dim() != 4:
        raise ValueError(f"state_q: int8 [L, H, P, N] expected, got {state_q.dtype} {tuple(state_q.shape)}")
    L, H, P, N = state_q.shape
    if state_scale.dtype != torch.float32 or tuple(state_scale.shape) != (L, H):
        raise ValueError(f"state_scale: float32 [{L}, {H}] expected, got {state_scale.dtype} "
                         f"{tuple(state_scale.shape)}")
    if indices.dim() != 1 or indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"state indices: int32/int64 [b] expected, got {indices.dtype} {tuple(indices.shape)}")
    if not (state_q.device == state_scale.device == indices.device):
        raise ValueError("state_q, state_scale and the indices must be on one device")
    return L, H, P, N


def int8_state_update(state_q: torch.Tensor, state_scale: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                      A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
                      dt_bias: torch.Tensor | None, *, state_batch_indices: torch.Tensor, out: torch.Tensor,
                      null_block_id: int = 0, dt_softplus: bool = True) -> None:
    """One decode step on int8 cache lines, in place.

    ``state_q [L, H, P, N]`` int8 and ``state_scale [L, H]`` float32 (updated in place), ``x [b, H, P]``,
    ``dt [b, H]`` (raw: ``+ dt_bias`` then softplus when ``dt_softplus``), ``A [H]`` (negative), ``B``/``C``
    ``[b, G, N]`` (head h reads group ``h // (H // G)``), ``D [H]``, ``dt_bias [H]`` (either may be None),
    ``state_batch_indices [b]`` (each sequence's cache line; ``null_block_id`` = padding, untouched), ``out [b, H, P]``
    (written for real entries). Per (sequence, head)::

        dt' = softplus(dt + dt_bias);  h = dequant(q, scale)·exp(A·dt') + dt'·x[:, None]·B[None, :]
        y = (h·C).sum(-1) + D·x;       (q, scale) = quantize(h)
    """
    L, H, P, N = _check_cache(state_q, state_scale, state_batch_indices)
    b = state_batch_indices.shape[0]
    G = B.shape[1]
    if x.shape != (b, H, P) or dt.shape != (b, H) or A.shape != (H,) or B.shape != (b, G, N) or C.shape != B.shape:
        raise ValueError(f"shapes: x {tuple(x.shape)} (want {(b, H, P)}), dt {tuple(dt.shape)} (want {(b, H)}), "
                         f"A {tuple(A.shape)} (want {(H,)}), B {tuple(B.shape)}, C {tuple(C.shape)} (want [b, G, {N}])")
    if H % G:
        raise ValueError(f"{H} heads do not split into {G} groups")
    if out.shape != (b, H, P):
        raise ValueError(f"out: {(b, H, P)} expected, got {tuple(out.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and (t.shape != (H,) or t.stride(0) != 1):
            raise ValueError(f"{name}: contiguous [{H}] expected, got {tuple(t.shape)}")
    if A.stride(0) != 1:
        A = A.contiguous()
    if b == 0:
        return
    bp, bn, warps = _launch(P, N)
    _int8_state_update_kernel[(b, H)](
        state_q, state_scale, x, dt, A, B, C, D, dt_bias, state_batch_indices, out,
        int(null_block_id), P, N, H // G,
        *state_q.stride(), *state_scale.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
        *out.stride(), state_batch_indices.stride(0),
        DT_SOFTPLUS=bool(dt_softplus), HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None,
        BLOCK_P=bp, BLOCK_N=bn, num_warps=warps)


def int8_dequantize_states(state_q: torch.Tensor, state_scale: torch.Tensor, indices: torch.Tensor,
                           null_block_id: int = 0) -> torch.Tensor:
    """The cache lines ``indices [n]`` as float32 states ``[n, H, P, N]`` (``q · scale``); rows whose index is
    ``null_block_id`` are zeros and do not read it."""
    L, H, P, N = _check_cache(state_q, state_scale, indices)
    n = indices.shape[0]
    out = torch.empty(n, H, P, N, dtype=torch.float32, device=state_q.device)
    if n == 0:
        return out
    bp, bn, warps = _launch(P, N)
    _int8_dequantize_kernel[(n, H)](
        state_q, state_scale, indices, out, int(null_block_id), P, N,
        *state_q.stride(), *state_scale.stride(), *out.stride(), indices.stride(0),
        BLOCK_P=bp, BLOCK_N=bn, num_warps=warps)
    return out


def int8_quantize_states_(states: torch.Tensor, state_q: torch.Tensor, state_scale: torch.Tensor,
                          indices: torch.Tensor, null_block_id: int = 0) -> None:
    """Store ``states [n, H, P, N]`` (any float dtype) into the cache lines ``indices [n]`` as int8 + per-head scale;
    rows whose index is ``null_block_id`` are skipped (the null block is not written)."""
    L, H, P, N = _check_cache(state_q, state_scale, indices)
    n = indices.shape[0]
    if states.shape != (n, H, P, N):
        raise ValueError(f"states: {(n, H, P, N)} expected, got {tuple(states.shape)}")
    if n == 0:
        return
    bp, bn, warps = _launch(P, N)
    _int8_quantize_kernel[(n, H)](
        states, state_q, state_scale, indices, int(null_block_id), P, N,
        *states.stride(), *state_q.stride(), *state_scale.stride(), indices.stride(0),
        BLOCK_P=bp, BLOCK_N=bn, num_warps=warps)
