"""Dense vs pruned through vLLM's own load generator, `vllm bench serve` (the tool vLLM users already trust), same
state memory and the same request mix for both models; interleaved repeats.

    python benchmarks/vllm_bench_serve.py [--pruned build/reference-ghost50] [--repeats 3]
        # → benchmarks/results/vllm_bench_serve/{runs/*.json, vllm_bench_serve.json, vllm_bench_serve.md}

Each repeat starts `vllm serve MODEL` (the console script; on CPU the set-up's metadata alias makes it work) with
`--kv-cache-memory-bytes 26100000 --max-num-seqs 256 --dtype float32 --max-model-len 1024`, then runs

    vllm bench serve --backend openai --base-url http://127.0.0.1:PORT --model NAME --tokenizer MODEL
        --dataset-name random --random-input-len 64 --random-output-len 128 --random-range-ratio 0
        --num-prompts 384 --max-concurrency 128 --ignore-eos --seed 0 --save-result ...

and stops the server. Both use the same seed, hence the same prompts. The ratio reported is pruned/dense output
token throughput per repeat (this machine is shared and noisy: read the spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ghost_vllm.loadtest.server import VLLMServer  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "vllm_bench_serve"
SERVER_ARGS = ["--dtype", "float32", "--max-model-len", "1024", "--kv-cache-memory-bytes", "26100000",
               "--max-num-seqs", "256", "--no-enable-prefix-caching"]


def bench_args(port: int, name: str, tokenizer: str, args) -> list[str]:
    return ["bench", "serve", "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "--model", name,
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--random-range-ratio", "0", "--num-prompts",
            str(args.num_prompts), "--max-concurrency", str(args.concurrency), "--ignore-eos", "--seed", "0",
            "--disable-tqdm", "--save-result"]


def run_one(model: str, label: str, repeat: int, args) -> dict:
    runs = OUT / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    vllm = str(Path(sys.executable).parent / "vllm")
    name = f"{label}-{repeat}"
    with VLLMServer(model, [*SERVER_ARGS, "--served-model-name", label], log_path=runs / f"{name}.server.log",
                    launcher="vllm", startup_timeout=600) as server:
        cmd = [vllm, *bench_args(server.port, label, model, args), "--result-dir", str(runs),
               "--result-filename", f"{name}.json"]
        with open(runs / f"{name}.bench.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=3600)
    result = json.loads((runs / f"{name}.json").read_text())
    keep = ("completed", "failed", "output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms",
            "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "duration")
    return {"model": label, "repeat": repeat, **{k: result.get(k) for k in keep}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", default=str(ROOT / "ghost_vllm" / "reference" / "model"))
    ap.add_argument("--pruned", default=str(ROOT / "build" / "reference-ghost50"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=384)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    args = ap.parse_args()
    if not (Path(args.pruned) / "ghost.json").is_file():
        raise SystemExit(f"error: {args.pruned} is not a ghost checkpoint; run `make run` (or ghost-vllm prune) first")
    rows = []
    for rep in range(args.repeats):
        for label, model in (("dense", args.dense), ("pruned", args.pruned)):
            rows.append(run_one(model, label, rep, args))
            print(json.dumps(rows[-1]), flush=True)
    ratios = []
    for rep in range(args.repeats):
        d, p = (next(r for r in rows if r["model"] == m and r["repeat"] == rep) for m in ("dense", "pruned"))
        ratios.append(p["output_throughput"] / d["output_throughput"])
    summary = {"server_args": SERVER_ARGS, "bench_args": bench_args(0, "NAME", "MODEL", args)[2:], "rows": rows,
               "ratios": ratios, "ratio_median": statistics.median(ratios)}
    (OUT / "vllm_bench_serve.json").write_text(json.dumps(summary, indent=1) + "\n")

    def med(model: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["model"] == model)

    lines = [f"`vllm bench serve` (random dataset, prompt {args.input_len}, output {args.output_len} tokens, "
             f"{args.num_prompts} prompts, max concurrency {args.concurrency}, seed 0) against `vllm serve` with "
             f"26,100,000 B of state memory; medians of {args.repeats} interleaved repeats, this 2-core CPU.", "",
             "| model | output tok/s | req/s | TTFT p50 / p99 ms | TPOT p50 ms | completed / failed |",
             "|---|---|---|---|---|---|"]
    for m in ("dense", "pruned"):
        done = sum(r["completed"] for r in rows if r["model"] == m)
        failed = sum(r["failed"] or 0 for r in rows if r["model"] == m)
        lines.append(f"| {m} | {med(m, 'output_throughput'):.1f} | {med(m, 'request_throughput'):.2f} | "
                     f"{med(m, 'median_ttft_ms'):.0f} / {med(m, 'p99_ttft_ms'):.0f} | {med(m, 'median_tpot_ms'):.1f} | "
                     f"{done} / {failed} |")
    lines += ["", f"pruned/dense output throughput: median {statistics.median(ratios):.3f} "
                  f"[{', '.join(f'{x:.3f}' for x in ratios)}]"]
    (OUT / "vllm_bench_serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
