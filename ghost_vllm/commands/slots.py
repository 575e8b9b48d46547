"""``ghost-vllm slots MODEL…``: vLLM state slots of each model in the same state memory (offline engines)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


__all__ = ["run_slots"]


def run_slots(args: argparse.Namespace) -> int:
    from ghost_vllm.inspection import inspect_checkpoint, sequence_bytes
    from ghost_vllm.sources import require_model_dir
    from ghost_vllm.units import parse_size

    memory = parse_size(args.state_memory, "--state-memory")
    dirs = [require_model_dir(name) for name in args.models]  # every model checked before the first engine starts
    # vLLM's INFO log is hundreds of lines per engine: errors only, unless the user asked (VLLM_LOGGING_LEVEL=INFO)
    quiet = "VLLM_LOGGING_LEVEL" not in os.environ
    if quiet:
        os.environ["VLLM_LOGGING_LEVEL"] = "ERROR"
    from ghost_vllm.plugin.offline import probe_engine

    rows = []
    try:
        for i, (name, path) in enumerate(zip(args.models, dirs)):
            model_dir = str(path)
            prompts = args.prompt if i == len(args.models) - 1 else None
            probe = probe_engine(model_dir, memory, prompts, args.max_tokens)
            b, _, what = sequence_bytes(inspect_checkpoint(Path(model_dir)))
            rows.append({"model": name, "bytes_per_sequence": b, "bytes_per_sequence_includes": what,
                         "num_gpu_blocks": probe.num_gpu_blocks, "state_slots": probe.state_slots,
                         "completions": dict(zip(prompts or [], probe.completions))})
    finally:
        if quiet:
            del os.environ["VLLM_LOGGING_LEVEL"]
    base = rows[0]["state_slots"]
    print(f"\nvLLM engines with {args.state_memory} of state memory each:")
    print("| model | B/seq | concurrent sequences (engine) | vs first |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['bytes_per_sequence']:,} | {r['state_slots']:,} | {r['state_slots'] / base:.3f}× |")
    print(f"(B/seq: {'; '.join(sorted({r['bytes_per_sequence_includes'] for r in rows}))}; concurrent sequences: "
          f"the engine's own count{'; vLLM logged errors only: VLLM_LOGGING_LEVEL=INFO for all' if quiet else ''})")
    for prompt, text in rows[-1]["completions"].items():
        print(f"\n[{rows[-1]['model']}] {prompt!r} → {text!r}")
    if args.json:
        from ghost_vllm.commands.io import write_json_atomic

        write_json_atomic(args.json, {"state_memory_bytes": memory, "rows": rows})
    return 0
