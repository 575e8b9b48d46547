"""A short version of the fidelity sweep on the shipped reference model: GHOST beats random at 50 %."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def test_ghost_beats_random_on_the_reference_model(tmp_path):
    assert WIKITEXT.is_file(), f"{WIKITEXT} missing: ../shared/data must sit beside the checkout (as in CI)"
    out = tmp_path / "fid"
    r = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--methods", "ghost,random", "--sparsities", "0.5",
                        "--random-seeds", "0,1", "--nsamples", "32", "--wikitext", str(WIKITEXT),
                        "--wikitext-tokens", "16384", "--eval-seq-lens", "512", "--lambada-limit", "50", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    rows = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    ppl = {(row["method"], row["seed"]): row["wt2_512_token_ppl"] for row in rows}
    random_mean = (ppl[("random", 0)] + ppl[("random", 1)]) / 2
    assert ppl[("dense", 0)] < ppl[("ghost", 0)] < random_mean
    assert (out / "fidelity.md").is_file() and (out / "ppl_vs_sparsity.png").is_file()
