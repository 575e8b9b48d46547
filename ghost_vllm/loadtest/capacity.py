"""``ghost-vllm bench capacity``: dense vs pruned through the real server, same engine settings and state memory,
interleaved repeats (dense, pruned, dense, pruned …) so machine drift cancels; ratios with their spread."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from ghost_vllm import __version__
from ghost_vllm.loadtest.load import run_level
from ghost_vllm.loadtest.server import VLLMServer
from ghost_vllm.errors import GhostError

__all__ = ["CapacitySpec", "run_capacity", "summarize", "percentile", "make_prompts", "saturation_warnings",
           "split_samples"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CapacitySpec:
    dense: str
    pruned: str
    state_memory_bytes: int
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 64
    prompt_len: int = 64
    max_tokens: int = 64
    rate: Optional[float] = None
    repeats: int = 3
    seed: int = 0
    max_model_len: int = 1024
    max_num_seqs: int = 256
    dtype: str = "float32"
    request_timeout_s: float = 600.0
    startup_timeout_s: float = 600.0
    scrape_interval_s: float = 0.5  # each /metrics render costs the server's event loop; don't hammer it
    host: str = "127.0.0.1"  # where the servers listen (one at a time)
    port: Optional[int] = None  # default: a free port

    def server_args(self) -> list[str]:
        return ["--dtype", self.dtype, "--max-model-len", str(self.max_model_len), "--enforce-eager",
                "--kv-cache-memory-bytes", str(self.state_memory_bytes), "--max-num-seqs", str(self.max_num_seqs),
                "--no-enable-prefix-caching", "--served-model-name", "bench"]


def percentile(values: list[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def make_prompts(model_dir: str, n: int, prompt_len: int, seed: int) -> list[list[int]]:
    """``n`` prompts of exactly ``prompt_len`` token ids cut from the reference validation text (seeded offsets)."""
    import random

    from ghost_vllm.checkpoint import load_tokenizer
    from ghost_vllm.sources import resolve_model_path
    from ghost_vllm.reference import VALIDATION_TEXT

    tok = load_tokenizer(resolve_model_path(model_dir))
    ids = tok(VALIDATION_TEXT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    if len(ids) < prompt_len + 1:
        raise GhostError(f"--prompt-len {prompt_len}: the prompt text has only {len(ids)} tokens")
    rng = random.Random(seed)
    return [ids[o : o + prompt_len] for o in (rng.randrange(0, len(ids) - prompt_len) for _ in range(n))]


def summarize(samples: list[dict], peaks: dict, deltas: dict) -> dict:
    ok = [s for s in samples if s["ok"]]
    dur = deltas["duration_s"]
    ttft = [s["ttft_s"] for s in ok if s["ttft_s"] is not None]
    itl = [x for s in ok for x in s["itl_s"]]
    e2e = [s["e2e_s"] for s in ok]
    out_tokens = sum(s["output_tokens"] for s in ok)
    row = {
        "sent": len(samples),
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "output_tokens": out_tokens,
        "duration_s": dur,
        "output_tokens_per_s": out_tokens / dur if dur > 0 else 0.0,
        "requests_per_s": len(ok) / dur if dur > 0 else 0.0,
        "peak_running": peaks["running_max"],
        "peak_waiting": peaks["waiting_max"],
        "scrapes": peaks["scrapes"],
        "scrape_failures": peaks["scrape_failures"],
        "preemptions": deltas["preemptions_delta"],
        "server_generation_tokens": deltas["generation_tokens_delta"],
        "server_request_success": deltas["request_success_delta"],
    }
    for name, vals in (("ttft_s", ttft), ("itl_s", itl), ("e2e_s", e2e)):
        for q in (50, 90, 99):
            row[f"{name}_p{q}"] = percentile(vals, q)
    return row


def _ratio_stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def run_capacity(spec: CapacitySpec, out_dir: Path, progress: bool = True, server_log_dir: Optional[Path] = None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = server_log_dir or out_dir / "server-logs"
    logs.mkdir(parents=True, exist_ok=True)
    prompts = make_prompts(spec.dense, spec.requests, spec.prompt_len, spec.seed)
    runs = []
    total = spec.repeats * 2 * len(spec.concurrency) * spec.requests
    bar = tqdm(total=total, desc="capacity", unit="req", disable=None if progress else True)
    for rep in range(spec.repeats):
        for variant, model in (("dense", spec.dense), ("pruned", spec.pruned)):
            bar.set_postfix(repeat=rep + 1, model=variant)
            with VLLMServer(model, spec.server_args(), log_path=logs / f"{variant}-{rep}.log",
                            startup_timeout=spec.startup_timeout_s, host=spec.host, port=spec.port) as server:
                blocks = _num_blocks(server)
                # warm-up at the largest batch, not recorded: first-time kernel set-up must not land in a level
                top = max(spec.concurrency)
                asyncio.run(run_level(server.base_url, "bench", (prompts * top)[:top], 16, top))
                for level in spec.concurrency:
                    samples, peaks, deltas = asyncio.run(run_level(
                        server.base_url, "bench", prompts, spec.max_tokens, level, spec.rate, spec.seed + rep,
                        spec.request_timeout_s, spec.scrape_interval_s, on_done=lambda _s: bar.update(1)))
                    raw = [s.to_dict() for s in samples]
                    pk = {"running_max": peaks.running_max, "waiting_max": peaks.waiting_max, "scrapes": peaks.scrapes,
                          "scrape_failures": peaks.failures, "series": peaks.series}
                    runs.append({"repeat": rep, "variant": variant, "model": model, "concurrency": level,
                                 "num_gpu_blocks": blocks, "summary": summarize(raw, pk, deltas), "samples": raw,
                                 "metrics_series": peaks.series, "scrape_error": peaks.last_error})
    bar.close()
    result = {"spec": {**spec.__dict__, "concurrency": list(spec.concurrency)}, "version": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs,
              "summary": _aggregate(runs, spec)}
    result["warnings"] = saturation_warnings(result)
    return result


def split_samples(result: dict) -> tuple[dict, list[dict]]:
    """(``result`` without the per-request samples, those samples one dict per request tagged with its repeat,
    variant and concurrency): what ``capacity.json`` and ``samples.jsonl`` hold. The summaries and plots are computed
    from the samples before the split, so the samples — megabytes per run — stay out of the committed results."""
    rows = []
    runs = []
    for run in result["runs"]:
        run = dict(run)
        tag = {"repeat": run["repeat"], "variant": run["variant"], "concurrency": run["concurrency"]}
        rows.extend({**tag, **s} for s in run.pop("samples", []))
        runs.append(run)
    return {**result, "runs": runs}, rows


def saturation_warnings(result: dict) -> list[str]:
    """A level whose scraped peak of running requests stayed under half of what it could reach (min(clients, state
    slots)) did not load the engine: its throughput ratio says little. One line per such level and model."""
    out = []
    for level, per in result["summary"]["levels"].items():
        for variant in ("dense", "pruned"):
            row = per.get(variant, {})
            slots = max(int(row.get("num_gpu_blocks") or 1) - 1, 0)
            reachable = min(int(level), slots)
            peak = row.get("peak_running")
            if reachable and (peak is None or peak < 0.5 * reachable):
                out.append(f"concurrency {level}, {variant}: at most {peak if peak is not None else 0:g} requests "
                           f"running of {reachable} possible — the engine was not saturated, so this level's "
                           f"throughput ratio says little; raise --requests or --max-tokens")
    return out


def _num_blocks(server: VLLMServer) -> Optional[int]:
    import re

    m = re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', server.metrics())
    return int(m.group(1)) if m else None


def _aggregate(runs: list[dict], spec: CapacitySpec) -> dict:
    levels = {}
    for level in spec.concurrency:
        per = {}
        for variant in ("dense", "pruned"):
            rows = [r["summary"] for r in runs if r["variant"] == variant and r["concurrency"] == level]
            per[variant] = {k: statistics.median([row[k] for row in rows if row[k] is not None])
                            for k in rows[0] if all(row[k] is not None for row in rows)}
            per[variant]["num_gpu_blocks"] = next(r["num_gpu_blocks"] for r in runs if r["variant"] == variant)
        ratios = {}
        for key in ("output_tokens_per_s", "peak_running", "requests_per_s"):
            vals = []
            for rep in range(spec.repeats):
                d = next(r["summary"][key] for r in runs if r["variant"] == "dense" and r["concurrency"] == level
                         and r["repeat"] == rep)
                p = next(r["summary"][key] for r in runs if r["variant"] == "pruned" and r["concurrency"] == level
                         and r["repeat"] == rep)
                if d:
                    vals.append(p / d)
            if vals:
                ratios[key] = _ratio_stats(vals)
        levels[str(level)] = {**per, "ratio": ratios}
    return {"levels": levels}


def load_result(path: Path) -> dict:
    return json.loads(path.read_text())
