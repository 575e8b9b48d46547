"""``ghost-vllm bench capacity``: the capacity-planning load test of a dense and a pruned model (real servers)."""

from __future__ import annotations

import argparse
import json

from ghost_vllm.errors import GhostError

__all__ = ["run_bench"]


def run_bench(args: argparse.Namespace) -> int:
    if args.bench_command != "capacity":
        raise GhostError("bench: choose a benchmark: ghost-vllm bench capacity --dense DIR --pruned DIR")
    from ghost_vllm.loadtest.capacity import CapacitySpec, run_capacity, split_samples
    from ghost_vllm.loadtest.report import markdown_table, plot, prometheus_textfile
    from ghost_vllm.sources import require_model_dir
    from ghost_vllm.commands.io import write_json_atomic, write_text_atomic
    from ghost_vllm.units import parse_size

    try:
        levels = tuple(int(x) for x in args.concurrency.split(",") if x.strip())
    except ValueError:
        raise GhostError(f"--concurrency {args.concurrency!r}: use comma-separated integers such as 1,4,16,64") from None
    if not levels or min(levels) < 1 or args.requests < 1 or args.repeats < 1:
        raise GhostError("--concurrency, --requests and --repeats must be positive")
    if args.port is not None and not 0 < args.port < 65536:
        raise GhostError(f"--port {args.port}: use a TCP port between 1 and 65535")
    if args.rate is not None and args.rate <= 0:
        raise GhostError(f"--rate {args.rate}: use a positive number of requests per second")
    spec = CapacitySpec(
        dense=str(require_model_dir(args.dense, "--dense")), pruned=str(require_model_dir(args.pruned, "--pruned")),
        state_memory_bytes=parse_size(args.state_memory, "--state-memory"), concurrency=levels, requests=args.requests,
        prompt_len=args.prompt_len, max_tokens=args.max_tokens, rate=args.rate, repeats=args.repeats, seed=args.seed,
        max_num_seqs=args.max_num_seqs, request_timeout_s=args.request_timeout, scrape_interval_s=args.scrape_interval,
        host=args.host, port=args.port,
    )
    result = run_capacity(spec, args.out, progress=not args.no_progress)
    table = markdown_table(result)
    plot(result, args.out)
    summary, samples = split_samples(result)
    write_json_atomic(args.out / "capacity.json", summary)
    write_text_atomic(args.out / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    write_text_atomic(args.out / "capacity.md", table)
    if args.prometheus_textfile:
        write_text_atomic(args.prometheus_textfile, prometheus_textfile(result))
    print(table)
    for line in result["warnings"]:
        print(f"warning: {line}")
    print(f"wrote {args.out}/capacity.json (summaries), samples.jsonl (every request), capacity.md, throughput.png, "
          f"latency_p99.png")
    return 0
