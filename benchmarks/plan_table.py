"""Capacity on one 80 GB GPU for the released Mamba2 shapes and Mamba-Codestral-7B, from `ghost-vllm plan`
(estimate mode: bf16 weights and state, gpu-memory-utilization 0.9, the default 2 GiB allowance), at κ = 0, 0.5,
0.75, and the least sparsity that holds 1,024 and 4,096 concurrent sequences.

    python benchmarks/plan_table.py        # → benchmarks/results/plan/plan_table.{json,md}

Configs only (no weights): the bundled real shapes (ghost_vllm/mamba/mamba_ssm_format.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "plan"
MODELS = ["mamba2-130m", "mamba2-370m", "mamba2-780m", "mamba2-1.3b", "mamba2-2.7b", "Mamba-Codestral-7B"]
COMMON = ["--gpu-memory", "80GB", "--gpu-memory-utilization", "0.9", "--dtype", "bfloat16", "--json"]


def plan(*args: str) -> list[dict]:
    cmd = [sys.executable, "-m", "ghost_vllm.cli", "plan", *args, *COMMON]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    rows = []
    for name in MODELS:
        variants = plan(name, "--sparsity", "0,0.5,0.75")
        targets = {t: plan(name, "--sparsity", "0", "--target-seqs", str(t))[-1] for t in (1024, 4096)}
        rows.append({"model": name, "variants": variants, "targets": targets,
                     "command": f"ghost-vllm plan {name} --sparsity 0,0.5,0.75 {' '.join(COMMON[:-1])}"})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "plan_table.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["One 80 GB GPU (8·10¹⁰ B), `--gpu-memory-utilization 0.9`, bf16 weights and state, 2 GiB allowance "
             "(estimate mode; `python benchmarks/plan_table.py`).", "",
             "| model | weights GB | dense: seqs / safe --max-num-seqs | κ 0.5 | κ 0.75 | 1,024 seqs need κ ≥ | "
             "4,096 seqs need κ ≥ |", "|---|---|---|---|---|---|---|"]

    def target(t: dict) -> str:
        if not t.get("reachable"):
            return "not reachable"
        return f"{t['sparsity']:.3f} (N' {t['state_size']}: {t['concurrent_sequences']:,})"

    for r in rows:
        v = {x["sparsity"]: x for x in r["variants"]}
        cells = [f"{v[k]['concurrent_sequences']:,} / {v[k]['max_num_seqs']:,}" for k in (0.0, 0.5, 0.75)]
        lines.append(f"| {r['model']} | {v[0.0]['weight_bytes'] / 1e9:.2f} | {' | '.join(cells)} | "
                     f"{target(r['targets'][1024])} | {target(r['targets'][4096])} |")
    (OUT / "plan_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
