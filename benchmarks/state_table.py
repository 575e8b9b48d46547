"""State per sequence of the real Mamba2 shapes, dense vs GHOST 50 %, and sequences per 80 GB of state memory.

    python benchmarks/state_table.py        # → benchmarks/results/state_table.{json,md}

Each figure comes from `ghost-vllm inspect` on a directory holding the model's real mamba_ssm-layout config.json
(no weights needed), once as released (d_state 128) and once with d_state 64 (what a GHOST-50 % checkpoint's config
says); tests/test_state_arithmetic.py checks the same arithmetic against vLLM's MambaStateShapeCalculator.
Mamba-Codestral-7B (n_groups 8) is included with its published shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ghost_vllm.mamba.mamba_ssm_format import REAL_CONFIGS, mamba_ssm_config

OUT = Path(__file__).resolve().parent / "results"
MEMORY = 80 * 10**9  # 80 GB of state memory


def inspect_bytes(cfg: dict, where: Path) -> dict:
    where.mkdir()
    (where / "config.json").write_text(json.dumps(cfg))
    return json.loads(subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "inspect", str(where), "--json",
                                      "--dtype", "bfloat16"], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    rows = []
    models = {name: mamba_ssm_config(name) for name in REAL_CONFIGS}
    models["Mamba-Codestral-7B"] = mamba_ssm_config("Mamba-Codestral-7B")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in models.items():
            info = inspect_bytes(cfg, Path(tmp) / name)
            half_cfg = {**cfg, "ssm_cfg": {**cfg["ssm_cfg"], "d_state": 64}}
            half = inspect_bytes(half_cfg, Path(tmp) / f"{name}-64")["bytes_per_sequence"]
            dense = info["bytes_per_sequence"]
            rows.append({"model": name, "layers": info["layers"], "n_groups": info["n_groups"], "dense_bytes": dense,
                         "ghost50_bytes": half, "dense_seqs_per_80GB": MEMORY // dense,
                         "ghost50_seqs_per_80GB": MEMORY // half, "ratio": dense / half})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "state_table.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["bf16 conv + SSM state per sequence (all layers), from `ghost-vllm inspect`; 80 GB = 8·10¹⁰ B.", "",
             "| model | layers | n_groups | dense MB/seq | GHOST-50 % MB/seq | dense seqs / 80 GB | GHOST-50 % seqs / 80 GB | "
             "ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layers']} | {r['n_groups']} | {r['dense_bytes'] / 1e6:.2f} | {r['ghost50_bytes'] / 1e6:.2f} | "
                     f"{r['dense_seqs_per_80GB']:,} | {r['ghost50_seqs_per_80GB']:,} | {r['ratio']:.3f}× |")
    (OUT / "state_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
