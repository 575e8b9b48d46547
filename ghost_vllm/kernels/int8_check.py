"""The int8 SSM-state kernels (:mod:`ghost_vllm.kernels.int8_state`) against an independent torch reference.

``python -m ghost_vllm.kernels.int8_check --json OUT [--wrong-scale-layout] [--limit N]``

Under ``TRITON_INTERPRET=1`` (with ``CUDA_VISIBLE_DEVICES=`` empty) it runs on CPU tensors; on a GPU, compiled. Each
case (H heads, P head_dim, G groups, N' state size) builds a cache of L lines (line 0 = the null block, filled with
nonzero codes so a write to it shows) holding random float states quantized by
:func:`ghost_vllm.mamba.int8_state.quantize`, each (line, head) at its own magnitude, and checks

* ``update``: :func:`int8_state_update` on a decode batch whose state indices are shuffled, non-contiguous lines
  plus one padded entry at the null block, against the step in float64 from the dequantized state
  (``h = h0·exp(A·dt') + dt'·x·B``, ``y = h·C + D·x``, dt' = softplus(dt + dt_bias)) followed by ``quantize``;
* ``dequant``: :func:`int8_dequantize_states` against ``dequantize`` (null rows must come back zero);
* ``prefill``: the prefill boundary — initial states from :func:`int8_dequantize_states` (sequences without one
  index the null block, which gives zeros), vLLM's own chunked SSD kernel ``mamba_chunk_scan_combined_varlen``
  (loaded unchanged by :func:`ghost_vllm.kernels.loader.load_vllm_ops`; chunk metadata as in
  :func:`ghost_vllm.kernels.check.mixer_prefill`), final states stored by :func:`int8_quantize_states_` (plus a padded
  row at the null block) — against :func:`ghost_vllm.mamba.reference.ssm_scan` in float64 then ``quantize``.

Criteria (:data:`LIMITS`): stored states within one quantum of the reference's (``|q·s − q_ref·s_ref| ≤
s_ref·(1+1e-5)`` elementwise), int8 codes off by at most 1 on at most 0.1 % of the elements (the kernels step in
float32, the reference in float64: a value within rounding noise of a half flips), scales within 1e-5 relative, y
within 1e-5 relative to its largest magnitude, the null block and the lines outside the batch bit-identical.

``--wrong-scale-layout`` hands the kernels the scales stored head-major (``[H, L]``, reinterpreted as ``[L, H]``), so
a line's scales are read and written at another line's / head's place: every case must then fail. Exit 0 when all
cases pass, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ghost_vllm.mamba import int8_state as fmt

__all__ = ["Int8Case", "LIMITS", "CASES", "run_case", "main"]

LIMITS = {
    "y_rel": 1e-5,  # max |y − y_ref| / max |y_ref|
    "scale_rel": 1e-5,  # max |s − s_ref| / s_ref
    "quanta": 1 + 1e-5,  # max |q·s − q_ref·s_ref| / s_ref
    "code_max_diff": 1,  # max |q − q_ref|
    "code_diff_frac": 1e-3,  # share of codes ≠ the reference's
    "null_block_changed": 0,
    "other_lines_changed": 0,
    "rel": 1e-6,  # dequantize: max |h − h_ref| / max |h_ref| (the same float32 product: 0 expected)
    "null_rows_nonzero": 0,
}


@dataclass(frozen=True)
class Int8Case:
    label: str
    num_heads: int
    head_dim: int
    n_groups: int
    state_size: int
    lines: int = 12  # cache lines, the null block included
    decode_batch: int = 5  # real decode entries (one padded entry at the null block is added)
    seqlens: tuple[int, ...] = (5, 19, 12)  # prefill; chunk 16: boundaries inside and across sequences
    initial: tuple[bool, ...] = (True, False, True)  # which prefill sequences start from their cached state
    chunk_size: int = 16
    prefill: bool = True  # run the prefill boundary too (vLLM's SSD kernel: most of the interpreter's time)


def _cases() -> list[Int8Case]:
    """The reference model's shipped per-layer sizes (adaptive κ 0.5: 120, 48, 72, 64, 40) and the dense 128, each
    with 1 and 2 groups, 8 heads. Head_dim 16 keeps the interpreter quick; three cases run the full head_dim 64. The
    prefill boundary runs once per N' (groups alternating, one of them at head_dim 64)."""
    full = {(128, 2), (120, 1), (40, 2)}
    prefill = {(120, 2), (48, 1), (72, 2), (64, 1), (40, 2), (128, 1)}
    out = []
    for n in (120, 48, 72, 64, 40, 128):
        for g in (1, 2):
            p = 64 if (n, g) in full else 16
            pre = (n, g) in prefill
            out.append(Int8Case(f"H=8 P={p} G={g} N'={n}{' +prefill' if pre else ''}", 8, p, g, n, prefill=pre))
    return out


CASES = _cases()


class _Scales:
    """The cache's scales as the kernels get them: ``[L, H]`` (right), or stored head-major ``[H, L]`` and handed
    over reinterpreted as ``[L, H]`` (wrong layout). :meth:`read` gives them back in the true ``[L, H]`` layout."""

    def __init__(self, scale: torch.Tensor, wrong: bool):
        self.shape, self.wrong = tuple(scale.shape), wrong
        self.phys = scale.t().contiguous() if wrong else scale.clone()

    def arg(self) -> torch.Tensor:
        return self.phys.view(self.shape) if self.wrong else self.phys

    def read(self) -> torch.Tensor:
        return self.phys.t() if self.wrong else self.phys


def _state_errors(q: torch.Tensor, s: torch.Tensor, q_ref: torch.Tensor, s_ref: torch.Tensor) -> dict[str, float]:
    """Stored (q [.., H, P, N], s [.., H]) against the reference's."""
    q, q_ref = q.cpu().long(), q_ref.cpu().long()
    s, s_ref = s.cpu().double(), s_ref.cpu().double()
    diff = (q - q_ref).abs()
    pos = s_ref > 0
    scale_rel = torch.where(pos, (s - s_ref).abs() / s_ref.clamp_min(1e-300),
                            torch.where(s == 0, 0.0, math.inf))
    deq, deq_ref = q.double() * s[..., None, None], q_ref.double() * s_ref[..., None, None]
    err = (deq - deq_ref).abs()
    quanta = torch.where(pos[..., None, None], err / s_ref.clamp_min(1e-300)[..., None, None],
                         torch.where(err == 0, 0.0, math.inf))
    return {"scale_rel": float(scale_rel.max()), "quanta": float(quanta.max()),
            "code_max_diff": float(diff.max()), "code_diff_frac": float((diff != 0).double().mean())}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _lines_changed(q, s, q0, s0, lines: list[int]) -> float:
    if not lines:
        return 0.0
    idx = torch.tensor(lines)
    same = torch.equal(q.cpu()[idx], q0.cpu()[idx]) and torch.equal(s.cpu()[idx], s0.cpu()[idx])
    return 0.0 if same else 1.0


def _ref_step(h0, x, dt, A, B, C, D, dt_bias):
    """One decode step of one sequence in float64: h0 [H, P, N], x [H, P], dt [H], B/C [G, N] → (y [H, P], h)."""
    H, G = h0.shape[0], B.shape[0]
    h0, x, A, D = h0.double(), x.double(), A.double(), D.double()
    dtp = F.softplus(dt.double() + dt_bias.double())
    Bh, Ch = B.double().repeat_interleave(H // G, 0), C.double().repeat_interleave(H // G, 0)
    h = h0 * torch.exp(A * dtp)[:, None, None] + (dtp[:, None] * x)[..., None] * Bh[:, None, :]
    y = torch.einsum("hpn,hn->hp", h, Ch) + D[:, None] * x
    return y, h


def run_case(case: Int8Case, ops, device: str, seed: int, wrong_scale_layout: bool = False) -> dict:
    from ghost_vllm.kernels.check import chunk_metadata
    from ghost_vllm.kernels.int8_state import int8_dequantize_states, int8_quantize_states_, int8_state_update
    from ghost_vllm.mamba.reference import ssm_scan

    g = torch.Generator().manual_seed(seed)
    H, P, G, N, L = case.num_heads, case.head_dim, case.n_groups, case.state_size, case.lines
    null = int(ops.NULL_BLOCK_ID) if ops is not None else 0

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    A = -torch.exp(rand(H, scale=0.5))
    D, dt_bias = rand(H), rand(H, scale=0.5)
    # the cache: every (line, head) at its own magnitude, so scales differ across lines and heads
    h_cache = rand(L, H, P, N) * (0.3 * torch.exp(rand(L, H, 1, 1)))
    q0, s0 = fmt.quantize(h_cache)
    q0[null] = torch.randint(-127, 128, (H, P, N), generator=g, dtype=torch.int8)  # the null block: nonzero
    s0[null] = torch.rand(H, generator=g) + 0.5
    perm = (torch.randperm(L - 1, generator=g) + 1).tolist()  # lines 1 … L-1, shuffled
    errors: dict[str, float] = {}
    start = time.perf_counter()

    # ---- decode step ---------------------------------------------------------------------------------------------
    b = case.decode_batch
    real_lines = perm[:b]
    idx = real_lines[:b // 2] + [null] + real_lines[b // 2:]  # one padded entry in the middle
    nb = len(idx)
    x, dt = rand(nb, H, P), rand(nb, H, scale=0.5)
    B, C = rand(nb, G, N), rand(nb, G, N)
    q = q0.clone().to(device)
    scales = _Scales(s0.to(device), wrong_scale_layout)
    out = torch.zeros(nb, H, P, device=device)
    dv = {k: v.to(device) for k, v in dict(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias).items()}
    int8_state_update(q, scales.arg(), dv["x"], dv["dt"], dv["A"], dv["B"], dv["C"], dv["D"], dv["dt_bias"],
                      state_batch_indices=torch.tensor(idx, dtype=torch.int32, device=device), out=out,
                      null_block_id=null, dt_softplus=True)
    s = scales.read()
    ys, hs, ys_ref, qs_ref, ss_ref = [], [], [], [], []
    for j, line in enumerate(idx):
        if line == null:
            continue
        y_ref, h_ref = _ref_step(fmt.dequantize(q0[line], s0[line]), x[j], dt[j], A, B[j], C[j], D, dt_bias)
        qr, sr = fmt.quantize(h_ref)
        ys.append(out[j].cpu())
        ys_ref.append(y_ref)
        hs.append((q[line].cpu(), s[line].cpu()))
        qs_ref.append(qr)
        ss_ref.append(sr)
    errors["update.y_rel"] = _rel(torch.stack(ys), torch.stack(ys_ref))
    st = _state_errors(torch.stack([h[0] for h in hs]), torch.stack([h[1] for h in hs]), torch.stack(qs_ref),
                       torch.stack(ss_ref))
    errors.update({f"update.{k}": v for k, v in st.items()})
    errors["update.null_block_changed"] = _lines_changed(q, s, q0, s0, [null])
    errors["update.other_lines_changed"] = _lines_changed(q, s, q0, s0, perm[b:])

    # ---- dequantize (shuffled lines, one null row) ---------------------------------------------------------------
    q = q0.clone().to(device)
    scales = _Scales(s0.to(device), wrong_scale_layout)
    didx = perm[1:3] + [null] + perm[5:8]
    deq = int8_dequantize_states(q, scales.arg(), torch.tensor(didx, dtype=torch.int32, device=device), null)
    real = torch.tensor([i != null for i in didx])
    sel = torch.tensor([i for i in didx if i != null])
    ref = fmt.dequantize(q0[sel], s0[sel])
    errors["dequant.rel"] = _rel(deq.cpu()[real], ref)
    errors["dequant.null_rows_nonzero"] = float((deq.cpu()[~real] != 0).any())

    # ---- prefill boundary: int8 lines → initial states → vLLM's chunked SSD → final states → int8 lines ----------
    if ops is not None and case.prefill:
        seqlens, nseq, T = list(case.seqlens), len(case.seqlens), sum(case.seqlens)
        lines = perm[-nseq:][::-1]
        q = q0.clone().to(device)
        scales = _Scales(s0.to(device), wrong_scale_layout)
        init_idx = [ln if has else null for ln, has in zip(lines, case.initial)]
        init = int8_dequantize_states(q, scales.arg(), torch.tensor(init_idx, dtype=torch.int32, device=device), null)
        xp, dtp = rand(T, H, P), rand(T, H, scale=0.5)
        Bp, Cp = rand(T, G, N), rand(T, G, N)
        cu, last, seq_idx = chunk_metadata(seqlens, case.chunk_size)
        i32 = dict(dtype=torch.int32, device=device)
        qsl = [0, *torch.tensor(seqlens).cumsum(0).tolist()]
        y = torch.empty(T, H, P, device=device)
        dvp = {k: v.to(device) for k, v in dict(x=xp, dt=dtp, A=A, B=Bp, C=Cp, D=D, dt_bias=dt_bias).items()}
        final = ops.mamba_chunk_scan_combined_varlen(
            dvp["x"], dvp["dt"], dvp["A"], dvp["B"], dvp["C"], chunk_size=case.chunk_size, D=dvp["D"], z=None,
            dt_bias=dvp["dt_bias"], seq_idx=torch.tensor(seq_idx, **i32), cu_seqlens=torch.tensor(qsl, **i32),
            cu_chunk_seqlens=torch.tensor(cu, **i32), last_chunk_indices=torch.tensor(last, **i32),
            initial_states=init, dt_softplus=True, dt_limit=(0.0, float("inf")), out=y, state_dtype=torch.float32)
        # a padded row at the null block: must not be written
        padded = torch.cat([final[:1], torch.full_like(final[:1], 3.0), final[1:]])
        store_idx = lines[:1] + [null] + lines[1:]
        int8_quantize_states_(padded, q, scales.arg(), torch.tensor(store_idx, dtype=torch.int32, device=device),
                              null)
        s = scales.read()
        ys_ref, qs_ref, ss_ref = [], [], []
        for i, (lo, hi) in enumerate(zip(qsl[:-1], qsl[1:])):
            h0 = fmt.dequantize(q0[lines[i]], s0[lines[i]]).double() if case.initial[i] else None
            dts = F.softplus(dtp[lo:hi].double() + dt_bias.double())
            yr, hr = ssm_scan(xp[None, lo:hi].double(), dts[None], A.double(), Bp[None, lo:hi].double(),
                              Cp[None, lo:hi].double(), D.double(), initial_state=None if h0 is None else h0[None])
            ys_ref.append(yr[0])
            qr, sr = fmt.quantize(hr[0])
            qs_ref.append(qr)
            ss_ref.append(sr)
        errors["prefill.y_rel"] = _rel(y.cpu(), torch.cat(ys_ref))
        lt = torch.tensor(lines)
        st = _state_errors(q.cpu()[lt], s.cpu()[lt], torch.stack(qs_ref), torch.stack(ss_ref))
        errors.update({f"prefill.{k}": v for k, v in st.items()})
        errors["prefill.null_block_changed"] = _lines_changed(q, s, q0, s0, [null])
        errors["prefill.other_lines_changed"] = _lines_changed(q, s, q0, s0, perm[:-nseq])
    if device != "cpu":
        torch.cuda.synchronize()

    failed = sorted(k for k, v in errors.items() if not (math.isfinite(v) and v <= LIMITS[k.split(".", 1)[1]]))
    return {**asdict(case), "prefill": ops is not None and case.prefill, "null_block_id": null, "decode_indices": idx, "dequant_indices": didx,
            "prefill_lines": lines if ops is not None and case.prefill else [], "errors": errors,
            "failed_checks": failed, "ok": not failed, "seconds": round(time.perf_counter() - start, 3)}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ghost_vllm.kernels.int8_check",
                                 description="the int8 SSM-state kernels against the torch reference")
    ap.add_argument("--json", type=Path, help="write the per-case report here")
    ap.add_argument("--wrong-scale-layout", action="store_true",
                    help="hand the kernels head-major scales reinterpreted as [L, H]: every case must fail")
    ap.add_argument("--limit", type=int, default=0, help="run only the first N cases")
    ap.add_argument("--no-prefill", action="store_true", help="skip the prefill boundary (vLLM's SSD kernel)")
    args = ap.parse_args(argv)

    from ghost_vllm.kernels.loader import interpreting, load_vllm_ops

    device = "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not interpreting():
        print("error: no GPU and TRITON_INTERPRET is not 1; run with TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= to use "
              "the Triton interpreter", file=sys.stderr)
        return 2
    ops = None if args.no_prefill else load_vllm_ops()
    cases = CASES[:args.limit] if args.limit else CASES
    rows, failed = [], 0
    for i, case in enumerate(cases):
        row = run_case(case, ops, device, seed=i, wrong_scale_layout=args.wrong_scale_layout)
        failed += not row["ok"]
        rows.append(row)
        worst = ", ".join(row["failed_checks"][:4]) or "-"
        print(f"[{i + 1}/{len(cases)}] {'ok  ' if row['ok'] else 'FAIL'} {case.label}: failed {worst} "
              f"({row['seconds']:.1f} s)", flush=True)
    max_errors: dict[str, float] = {}
    for row in rows:
        for k, v in row["errors"].items():
            max_errors[k] = max(max_errors.get(k, 0.0), v)
    report = {"device": device, "interpreter": interpreting(), "wrong_scale_layout": args.wrong_scale_layout,
              "limits": LIMITS, "cases": rows, "failed": failed, "max_errors": max_errors}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    for k, v in max_errors.items():
        print(f"  max {k}: {v:.3g}")
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
