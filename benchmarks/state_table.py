"""State per sequence of the real Mamba2 shapes, dense vs GHOST 50 %, and sequences per 80 GB of state memory.

    python benchmarks/state_table.py        # → benchmarks/results/state_table.{json,md}

Each row comes from `ghost-vllm inspect` on a directory holding the model's real mamba_ssm-layout config.json
(no weights needed); tests/test_state_arithmetic.py checks the same arithmetic against vLLM's
MambaStateShapeCalculator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ghost_vllm.mamba.ssm_layout import REAL_CONFIGS, hf_config_from_mamba_ssm, mamba_ssm_config
from ghost_vllm.state import state_size_of

OUT = Path(__file__).resolve().parent / "results"
MEMORY = 80 * 10**9  # 80 GB of state memory


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in REAL_CONFIGS:
            d = Path(tmp) / name
            d.mkdir()
            (d / "config.json").write_text(json.dumps(mamba_ssm_config(name)))
            info = json.loads(subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "inspect", str(d), "--json",
                                              "--dtype", "bfloat16"], capture_output=True, text=True, check=True).stdout)
            hf = hf_config_from_mamba_ssm(mamba_ssm_config(name))
            half = state_size_of(hf, state_size=64, dtype="bfloat16").bytes_per_sequence
            dense = info["bytes_per_sequence"]
            rows.append({"model": name, "layers": info["layers"], "dense_bytes": dense, "ghost50_bytes": half,
                         "dense_seqs_per_80GB": MEMORY // dense, "ghost50_seqs_per_80GB": MEMORY // half,
                         "ratio": dense / half})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "state_table.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["bf16 conv + SSM state per sequence (all layers), from `ghost-vllm inspect`; 80 GB = 8·10¹⁰ B.", "",
             "| model | layers | dense MB/seq | GHOST-50 % MB/seq | dense seqs / 80 GB | GHOST-50 % seqs / 80 GB | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layers']} | {r['dense_bytes'] / 1e6:.2f} | {r['ghost50_bytes'] / 1e6:.2f} | "
                     f"{r['dense_seqs_per_80GB']:,} | {r['ghost50_seqs_per_80GB']:,} | {r['ratio']:.3f}× |")
    (OUT / "state_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
