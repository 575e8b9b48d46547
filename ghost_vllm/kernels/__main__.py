"""``python -m ghost_vllm.kernels [--json OUT] [--root DIR] [--mismatch] [--limit N] [--tol T]``

Runs vLLM's Mamba2 kernels (conv1d prefill/update, chunked SSD prefill, selective_state_update) on every case of
:func:`ghost_vllm.kernels.cases.interpreter_cases` and compares them with the reference scan. Exit 0 when every case
agrees to ``--tol``, 1 otherwise, 2 on bad input. ``--mismatch`` gives the reference one state channel fewer than
the kernels (a deliberately wrong N'): every case must then fail. Under ``TRITON_INTERPRET=1`` (set it in the
environment, with ``CUDA_VISIBLE_DEVICES=`` empty) it runs on the CPU; on a GPU it runs compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ghost_vllm.kernels", description=__doc__.split("\n\n")[1])
    ap.add_argument("--json", type=Path, help="write the per-case report here")
    ap.add_argument("--root", type=Path, help="a vLLM tree holding model_executor/ (default: the installed vllm)")
    ap.add_argument("--mismatch", action="store_true", help="reference at N'-1: every case must fail")
    ap.add_argument("--limit", type=int, default=0, help="run only the first N cases")
    ap.add_argument("--tol", type=float, default=1e-5, help="largest relative error accepted (default 1e-5)")
    args = ap.parse_args(argv)
    if args.root is not None and not (args.root / "model_executor").is_dir():
        print(f"error: --root {args.root}: no model_executor/ there; pass the directory that holds vLLM's "
              f"model_executor/ (e.g. .venv/lib/python3.11/site-packages/vllm)", file=sys.stderr)
        return 2

    from ghost_vllm.kernels.cases import interpreter_cases
    from ghost_vllm.kernels.check import run_case
    from ghost_vllm.kernels.loader import interpreting, load_vllm_ops

    import torch

    device = "cpu" if interpreting() or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not interpreting():
        print("error: no GPU and TRITON_INTERPRET is not 1; run with TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= to use "
              "the Triton interpreter", file=sys.stderr)
        return 2
    ops = load_vllm_ops(args.root)
    cases = interpreter_cases()
    if args.limit:
        cases = cases[:args.limit]
    rows, failed = [], 0
    for i, case in enumerate(cases):
        ref_n = case.state_size - 1 if args.mismatch else None
        res = run_case(ops, case, device=device, seed=i, reference_state_size=ref_n)
        ok = res.ok(args.tol)
        failed += not ok
        worst = max(res.errors, key=lambda k: res.errors[k])
        print(f"[{i + 1}/{len(cases)}] {'ok  ' if ok else 'FAIL'} H={case.num_heads} P={case.head_dim} "
              f"G={case.n_groups} N'={case.state_size}: worst {worst} {res.errors[worst]:.2e} ({res.seconds:.1f} s)",
              flush=True)
        rows.append({**res.to_json(), "ok": ok})
    report = {"vllm_version": ops.version, "kernels_from": str(ops.root), "device": device,
              "interpreter": interpreting(), "tol": args.tol, "mismatch": args.mismatch, "cases": rows,
              "failed": failed}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, args.json)
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
