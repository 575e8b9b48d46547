"""The GPU check, ready for the first GPU we get: vLLM's Mamba2 kernels at mamba2-2.7b shapes, dense vs pruned state
sizes, and the pruning stage on CUDA. torch + triton only (no vLLM on such a machine): the kernels are vLLM's own
source files, carried beside the repository (``--prepare``) and loaded by :mod:`ghost_vllm.kernels.loader`.

    # here (vLLM installed): copy the kernel sources and the tokenizer into build/gpu-carry
    python benchmarks/gpu_kernels.py --prepare build/gpu-carry
    # on the GPU machine (device tool: carry build/gpu-carry; about 5 minutes on one H100):
    python benchmarks/gpu_kernels.py --carry build/gpu-carry --out "$OUT"
    # here, a smoke run of every code path under the Triton interpreter (what tests/test_gpu_script.py runs):
    TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= python benchmarks/gpu_kernels.py --carry build/gpu-carry --smoke --out DIR

What it measures (each written to ``gpu_kernels.json`` + ``gpu_kernels.md`` under ``--out``):

1. **correctness, compiled**: :func:`ghost_vllm.kernels.check.run_case` at the real rank shape (80 heads × 64,
   n_groups 1) for N' = 128, 64 and the shipped per-layer sizes, float32 state (tolerance 5e-3: TF32 ``tl.dot`` and
   ``ex2.approx`` on the GPU);
2. **decode step** (``selective_state_update`` + ``causal_conv1d_update``, one token per sequence, bfloat16 cache as
   vLLM serves mamba2-2.7b) for batch 1 … 512 at every N', CUDA-event median of repeated launches; and the model-level
   step time of 64 layers, dense (N = 128), uniform N' = 64 and the shipped per-layer pattern (tiled over 64 layers);
3. **prefill** (``causal_conv1d_fn`` + ``mamba_chunk_scan_combined_varlen``, chunk 256) for 1 … 512 sequences of 128
   tokens at every N';
4. **pruning on CUDA**: ``ghost-vllm prune`` on random mamba2-2.7b weights (mamba_ssm layout, bfloat16), 128 × 128
   calibration tokens of the bundled held-out text: wall time, calibration time, peak GPU memory;
5. **the int8 state** (:mod:`ghost_vllm.kernels.int8_state`): its check (:mod:`ghost_vllm.kernels.int8_check`,
   compiled) and the state update alone — vLLM's ``selective_state_update`` on the bfloat16 cache vs the fused int8
   update (int8 + per-head scale in, float32 in registers, int8 + scale out) — for the same batches and N'.

Ratios pruned / dense are what to read: the state traffic of a decode step scales with N'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU machine runs this from a copy of the repository, uninstalled

TOKENIZER = "gpt-neox-20b.json"
SHAPE_2P7B = {"num_heads": 80, "head_dim": 64, "n_groups": 1, "state_size": 128, "conv_kernel": 4, "layers": 64}


def prepare(dest: Path) -> None:
    from ghost_vllm.kernels.loader import carry_sources

    if dest.exists():
        shutil.rmtree(dest)
    carry_sources(dest / "vllm")
    tok = ROOT.parent / "shared" / "data" / "tokenizers" / TOKENIZER
    shutil.copy2(tok, dest / TOKENIZER)
    print(f"carried vLLM's kernel sources and the tokenizer to {dest} "
          f"({sum(f.stat().st_size for f in dest.rglob('*') if f.is_file()) / 2**20:.1f} MiB)")


def shipped_per_layer_sizes() -> list[int]:
    """The shipped adaptive checkpoint's per-layer sizes (reference model, κ 0.5)."""
    budgets = json.loads((ROOT / "benchmarks/results/budgets/budgets.json").read_text())
    return next(r["adaptive_sizes"] for r in budgets["summary"] if r["sparsity"] == 0.5)


def _median_ms(fn, device: str, warmup: int, iters: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    if device == "cpu":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _params(shape: dict, n: int, device: str, dtype, g):
    import torch

    from ghost_vllm.kernels.check import MixerParams

    H, P, G, K = shape["num_heads"], shape["head_dim"], shape["n_groups"], shape["conv_kernel"]
    dim = H * P + 2 * G * n
    kw = dict(device=device, dtype=dtype)
    return MixerParams(torch.randn(dim, K, generator=g, **kw), torch.randn(dim, generator=g, **kw),
                       -torch.rand(H, device=device, generator=g) - 0.5, torch.randn(H, device=device, generator=g),
                       torch.randn(H, device=device, generator=g), P, G, n), dim


def time_decode(ops, shape: dict, n: int, batch: int, device: str, dtype, warmup: int, iters: int) -> float:
    """One decode step of one layer (:func:`~ghost_vllm.kernels.check.mixer_decode`: conv update + state update),
    ``batch`` sequences on cache lines 1..batch."""
    import torch

    from ghost_vllm.kernels.check import mixer_decode

    g = torch.Generator(device=device).manual_seed(0)
    p, dim = _params(shape, n, device, dtype, g)
    kw = dict(device=device, dtype=dtype)
    conv_cache = torch.randn(batch + 1, shape["conv_kernel"] - 1, dim, generator=g, **kw)
    ssm_cache = torch.randn(batch + 1, shape["num_heads"], shape["head_dim"], n, generator=g, **kw)
    xbc = torch.randn(batch, dim, generator=g, **kw)
    dt = torch.randn(batch, shape["num_heads"], generator=g, **kw)
    idx = torch.arange(1, batch + 1, dtype=torch.int32, device=device)
    return _median_ms(lambda: mixer_decode(ops, p, xbc, dt, conv_cache, ssm_cache, idx), device, warmup, iters)


def time_state_update(ops, shape: dict, n: int, batch: int, device: str, dtype, warmup: int, iters: int,
                      int8: bool) -> float:
    """The state update alone for one layer: vLLM's ``selective_state_update`` on a ``dtype`` cache, or (``int8``)
    :func:`~ghost_vllm.kernels.int8_state.int8_state_update` on an int8 cache with per-head scales."""
    import torch

    from ghost_vllm.kernels.int8_state import int8_state_update

    g = torch.Generator(device=device).manual_seed(0)
    p, _ = _params(shape, n, device, torch.float32, g)
    H, P, G = shape["num_heads"], shape["head_dim"], shape["n_groups"]
    kw = dict(device=device, dtype=dtype)
    x, dt = torch.randn(batch, H, P, generator=g, **kw), torch.randn(batch, H, generator=g, **kw)
    B, C = torch.randn(batch, G, n, generator=g, **kw), torch.randn(batch, G, n, generator=g, **kw)
    y = torch.zeros(batch, H, P, **kw)
    idx = torch.arange(1, batch + 1, dtype=torch.int32, device=device)
    if int8:
        q = torch.randint(-127, 128, (batch + 1, H, P, n), generator=g, device=device, dtype=torch.int8)
        scale = torch.rand(batch + 1, H, generator=g, device=device) * 1e-2
        return _median_ms(lambda: int8_state_update(q, scale, x, dt, p.A, B, C, p.D, p.dt_bias,
                                                    state_batch_indices=idx, out=y), device, warmup, iters)
    cache = torch.randn(batch + 1, H, P, n, generator=g, **kw)
    return _median_ms(lambda: ops.selective_state_update(
        cache, x, dt[:, :, None].expand(-1, -1, P), p.A[:, None, None].expand(-1, P, n), B, C,
        p.D[:, None].expand(-1, P), p.dt_bias[:, None].expand(-1, P), dt_softplus=True, state_batch_indices=idx,
        dst_state_batch_indices=idx, out=y), device, warmup, iters)


def time_prefill(ops, shape: dict, n: int, batch: int, seq_len: int, chunk: int, device: str, dtype, warmup: int,
                 iters: int) -> float:
    """One prefill of one layer (:func:`~ghost_vllm.kernels.check.mixer_prefill`: conv + chunked SSD),
    ``batch`` sequences of ``seq_len`` tokens; the batch metadata is built once, as vLLM's builder does."""
    import torch

    from ghost_vllm.kernels.check import PrefillBatch, mixer_prefill

    g = torch.Generator(device=device).manual_seed(0)
    p, dim = _params(shape, n, device, dtype, g)
    kw = dict(device=device, dtype=dtype)
    T = batch * seq_len
    conv_cache = torch.zeros(batch + 1, shape["conv_kernel"] - 1, dim, **kw)
    ssm_cache = torch.zeros(batch + 1, shape["num_heads"], shape["head_dim"], n, **kw)
    xbc = torch.randn(T, dim, generator=g, **kw)
    dt = torch.randn(T, shape["num_heads"], generator=g, **kw)
    meta = PrefillBatch.build([seq_len] * batch, torch.arange(1, batch + 1), [False] * batch, chunk, device,
                              int(ops.PAD_SLOT_ID))
    return _median_ms(lambda: mixer_prefill(ops, p, xbc, dt, conv_cache, ssm_cache, meta), device, warmup, iters)


def prune_on_device(work: Path, tokenizer: Path, device: str, name: str, nsamples: int, seq_len: int,
                    cfg_overrides: dict) -> dict:
    """``ghost-vllm prune`` (the CLI's own path, the default recipe) on random weights of a released shape."""
    import torch

    from ghost_vllm.cli import main as cli
    from ghost_vllm.mamba.mamba_ssm_format import mamba_ssm_config, save_random_mamba_ssm_checkpoint

    src, out = work / f"{name}-random", work / f"{name}-ghost50"
    cfg = mamba_ssm_config(name if not cfg_overrides else None, **cfg_overrides)
    t0 = time.perf_counter()
    save_random_mamba_ssm_checkpoint(src, cfg, seed=0, fmt="safetensors", dtype=torch.bfloat16)
    write_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = cli(["prune", "--model", str(src), "--calibration", "reference", "--nsamples", str(nsamples),
              "--seq-len", str(seq_len), "--tokenizer", str(tokenizer), "--dtype", "bfloat16", "--device", device,
              "--sparsity", "0.5", "--multiple-of", "8", "--out", str(out), "--overwrite", "--no-progress"])
    wall = time.perf_counter() - t0
    ghost = json.loads((out / "ghost.json").read_text()) if rc == 0 else {}
    row = {"model": name, "device": device, "rc": rc, "nsamples": nsamples, "seq_len": seq_len,
           "write_random_checkpoint_s": round(write_s, 2), "prune_wall_s": round(wall, 2),
           "timings": ghost.get("timings"), "state_size": ghost.get("state_size"),
           "state_sizes": ghost.get("state_sizes"), "allocation": ghost.get("allocation"), "refit": "refit" in ghost,
           "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None}
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def markdown(report: dict) -> str:
    lines = [f"# vLLM {report['vllm_version']} Mamba2 kernels on {report['device_name']}: dense vs pruned state sizes",
             "", f"Command: `{report['command']}`. Shape per layer: {report['shape']}. Times: median of "
             f"{report['iters']} launches (CUDA events); decode cache dtype {report['cache_dtype']}.", "",
             "## Correctness (compiled kernels vs the float64 reference scan)", "",
             "| N' | worst relative error | ok |", "|---|---|---|"]
    for c in report["correctness"]:
        lines.append(f"| {c['state_size']} | {max(c['errors'].values()):.1e} | {'✓' if c['ok'] else '✗'} |")
    sizes = report["sizes"]
    lines += ["", "## Decode step, one layer (conv update + state update), ms", "",
              "| batch | " + " | ".join(f"N'={n}" for n in sizes) + " | 64 / 128 |", "|---|" + "---|" * (len(sizes) + 1)]
    for b in report["batches"]:
        row = report["decode_ms"][str(b)]
        ratio = row.get("64", 0) / row["128"] if row.get("128") else float("nan")
        lines.append(f"| {b} | " + " | ".join(f"{row[str(n)]:.4f}" for n in sizes) + f" | {ratio:.3f} |")
    lines += ["", f"## Decode step, whole model ({report['shape']['layers']} layers), ms", "",
              f"| batch | dense {max(sizes)} | uniform {64 if 64 in sizes else min(sizes)} | per-layer " + "/".join(map(str, report["per_layer_sizes"])) +
              " (tiled) | uniform / dense | per-layer / dense |", "|---|---|---|---|---|---|"]
    for b, m in report["model_decode_ms"].items():
        lines.append(f"| {b} | {m['dense']:.3f} | {m['uniform']:.3f} | {m['per_layer']:.3f} | "
                     f"{m['uniform'] / m['dense']:.3f} | {m['per_layer'] / m['dense']:.3f} |")
    lines += ["", f"## Prefill, one layer ({report['prefill_seq_len']} tokens per sequence), ms", "",
              "| sequences | " + " | ".join(f"N'={n}" for n in sizes) + " | 64 / 128 |",
              "|---|" + "---|" * (len(sizes) + 1)]
    for b, row in report["prefill_ms"].items():
        ratio = row.get("64", 0) / row["128"] if row.get("128") else float("nan")
        lines.append(f"| {b} | " + " | ".join(f"{row[str(n)]:.3f}" for n in sizes) + f" | {ratio:.3f} |")
    if report.get("state_update_ms"):
        ok = sum(c["ok"] for c in report["int8_correctness"])
        lines += ["", "## The int8 state", "", f"Check (`ghost_vllm.kernels.int8_check`, compiled): {ok} of "
                  f"{len(report['int8_correctness'])} cases pass. State update alone, ms per layer "
                  f"(vLLM's on the {report['cache_dtype']} cache / the fused int8 update):", "",
                  "| batch | " + " | ".join(f"N'={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for b, row in report["state_update_ms"].items():
            lines.append(f"| {b} | " + " | ".join(" / ".join(f"{v:.3f}" for v in row[str(n)].values())
                                               for n in sizes) + " |")
    p = report.get("prune")
    if p:
        lines += ["", "## Pruning on the device", "", f"`ghost-vllm prune` {p['model']} (random weights, bfloat16), "
                  f"{p['nsamples']} × {p['seq_len']} calibration tokens, device {p['device']}: exit {p['rc']}, "
                  f"{p['prune_wall_s']} s wall, timings {p['timings']}, peak GPU memory "
                  f"{(p['peak_gpu_memory_bytes'] or 0) / 2**30:.2f} GiB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", type=Path, help="copy the kernel sources and tokenizer here, then stop")
    ap.add_argument("--carry", type=Path, default=ROOT / "build/gpu-carry", help="what --prepare wrote")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and counts (interpreter / CPU check of the code)")
    ap.add_argument("--skip-prune", action="store_true")
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    import torch

    from ghost_vllm.kernels.check import KernelCase, run_case
    from ghost_vllm.kernels.loader import interpreting, load_vllm_ops

    device = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
    if device == "cpu" and not args.smoke:
        print("error: no CUDA device; run on a GPU, or with --smoke under TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if not (args.carry / "vllm").is_dir():
        print(f"error: {args.carry}/vllm missing; run --prepare {args.carry} where vLLM is installed and carry it",
              file=sys.stderr)
        return 2
    ops = load_vllm_ops(args.carry / "vllm")
    per_layer = shipped_per_layer_sizes()
    if args.smoke:
        shape = {"num_heads": 2, "head_dim": 16, "n_groups": 1, "state_size": 16, "conv_kernel": 4, "layers": 6}
        sizes, batches, prefill_batches, iters, warmup, seq_len, chunk = [16, 8], [1, 2], [1, 2], 1, 0, 16, 8
        per_layer = [16, 8, 8, 16, 8, 8]
        prune_args = ("tiny", 4, 16, {"d_model": 64, "n_layer": 2, "vocab_size": 50277})
    else:
        shape = SHAPE_2P7B
        sizes = sorted({128, 64, *per_layer}, reverse=True)
        batches, prefill_batches, iters, warmup, seq_len, chunk = [1, 8, 32, 128, 512], [1, 8, 64, 512], 50, 5, 128, 256
        prune_args = ("mamba2-2.7b", 128, 128, {})
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    report = {"command": " ".join(["python", "benchmarks/gpu_kernels.py", *(argv or sys.argv[1:])]),
              "vllm_version": ops.version, "device": device,
              "device_name": torch.cuda.get_device_name() if device == "cuda" else "Triton interpreter (CPU)",
              "shape": shape, "sizes": sizes, "per_layer_sizes": per_layer, "batches": batches, "iters": iters,
              "cache_dtype": str(dtype).replace("torch.", ""), "prefill_seq_len": seq_len}
    t_start = time.perf_counter()
    correctness = []
    for n in sizes:
        heads = shape["num_heads"]
        seqs = {"seqlens": (5, 23), "initial": (False, True)} if args.smoke else {}
        case = KernelCase(f"compiled N'={n}", heads, shape["head_dim"], shape["n_groups"], n, chunk_size=chunk, **seqs)
        res = run_case(ops, case, device=device, seed=n)
        correctness.append({**res.to_json(), "ok": res.ok(5e-3 if device == "cuda" else 1e-5)})
        print(f"correctness N'={n}: worst {max(res.errors.values()):.1e}", flush=True)
    report["correctness"] = correctness
    report["decode_ms"] = {str(b): {str(n): time_decode(ops, shape, n, b, device, dtype, warmup, iters)
                                    for n in sizes} for b in batches}
    layers = shape["layers"]
    tiled = [per_layer[i % len(per_layer)] for i in range(layers)]
    report["model_decode_ms"] = {str(b): {"dense": layers * report["decode_ms"][str(b)][str(max(sizes))],
                                          "uniform": layers * report["decode_ms"][str(b)][str(sizes[-1] if args.smoke
                                                                                             else 64)],
                                          "per_layer": sum(report["decode_ms"][str(b)][str(n)] for n in tiled)}
                                 for b in batches}
    print("decode timed", flush=True)
    report["prefill_ms"] = {str(b): {str(n): time_prefill(ops, shape, n, b, seq_len, chunk, device, dtype, warmup,
                                                          max(iters // 5, 1)) for n in sizes}
                            for b in prefill_batches}
    print("prefill timed", flush=True)
    from ghost_vllm.kernels.int8_check import CASES as INT8_CASES, run_case as int8_case

    int8 = [int8_case(c, ops, device, seed=i) for i, c in enumerate(INT8_CASES[:2] if args.smoke else INT8_CASES)]
    report["int8_correctness"] = [{"label": r["label"], "ok": r["ok"], "failed_checks": r["failed_checks"],
                                   "max_error": max(r["errors"].values())} for r in int8]
    report["state_update_ms"] = {str(b): {str(n): {
        "vllm_" + report["cache_dtype"]: time_state_update(ops, shape, n, b, device, dtype, warmup, iters, False),
        "int8": time_state_update(ops, shape, n, b, device, dtype, warmup, iters, True)} for n in sizes}
        for b in batches}
    print("int8 state checked and timed", flush=True)
    if not args.skip_prune:
        work = Path(os.environ.get("TMPDIR", "/tmp")) / "ghost-gpu-prune"
        work.mkdir(parents=True, exist_ok=True)
        report["prune"] = prune_on_device(work, args.carry / TOKENIZER, device, *prune_args)
        print(f"prune: {report['prune']}", flush=True)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_kernels.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_kernels.md").write_text(markdown(report))
    ok = (all(c["ok"] for c in correctness) and all(c["ok"] for c in report["int8_correctness"])
          and (args.skip_prune or report["prune"]["rc"] == 0))
    print(f"{'ok' if ok else 'FAILED'} in {report['seconds']} s → {args.out}/gpu_kernels.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
