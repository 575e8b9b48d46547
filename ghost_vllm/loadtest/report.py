"""Capacity results → Markdown table, PNG plots and a Prometheus textfile."""

from __future__ import annotations

from pathlib import Path

from ghost_vllm.loadtest.promtext import format_textfile

__all__ = ["markdown_table", "plot", "prometheus_textfile"]


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown_table(result: dict) -> str:
    spec = result["spec"]
    lines = [
        f"Same state memory ({spec['state_memory_bytes']:,} B) for both models; {spec['requests']} requests per level, "
        f"prompt {spec['prompt_len']} tokens, {spec['max_tokens']} output tokens, "
        f"{'rate ' + str(spec['rate']) + ' req/s' if spec['rate'] else 'closed loop'}; medians of {spec['repeats']} "
        f"interleaved repeats.",
        "",
        "| concurrency | model | state slots | peak running | peak waiting | output tok/s | req/s | TTFT p50/p99 s | "
        "ITL p50/p99 s | e2e p99 s | completed/failed | preemptions |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, row in result["summary"]["levels"].items():
        for variant in ("dense", "pruned"):
            r = row[variant]
            slots = r.get("num_gpu_blocks")
            lines.append(
                f"| {level} | {variant} | {slots - 1 if slots else '-'} | {_f(r.get('peak_running'), '{:.0f}')} | "
                f"{_f(r.get('peak_waiting'), '{:.0f}')} | {_f(r.get('output_tokens_per_s'), '{:.1f}')} | "
                f"{_f(r.get('requests_per_s'))} | {_f(r.get('ttft_s_p50'), '{:.3f}')}/{_f(r.get('ttft_s_p99'), '{:.3f}')} | "
                f"{_f(r.get('itl_s_p50'), '{:.4f}')}/{_f(r.get('itl_s_p99'), '{:.4f}')} | {_f(r.get('e2e_s_p99'))} | "
                f"{_f(r.get('completed'), '{:.0f}')}/{_f(r.get('failed'), '{:.0f}')} | {_f(r.get('preemptions'), '{:.0f}')} |"
            )
    lines += ["", "| concurrency | pruned/dense output tok/s (median [min, max]) | pruned/dense peak running |", "|---|---|---|"]
    for level, row in result["summary"]["levels"].items():
        cells = []
        for key in ("output_tokens_per_s", "peak_running"):
            r = row["ratio"].get(key)
            cells.append(f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]" if r else "-")
        lines.append(f"| {level} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(k) for k in result["summary"]["levels"]]
    paths = []
    for key, ylabel, name in (("output_tokens_per_s", "output tokens / s", "throughput.png"),
                              ("e2e_s_p99", "end-to-end latency p99 (s)", "latency_p99.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant in ("dense", "pruned"):
            ys = [result["summary"]["levels"][str(c)][variant].get(key) for c in levels]
            ax.plot(levels, ys, marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs concurrency (same state memory)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def prometheus_textfile(result: dict) -> str:
    fams = {
        "ghost_bench_output_tokens_per_second": ("gauge", "Median output tokens per second", "output_tokens_per_s"),
        "ghost_bench_requests_per_second": ("gauge", "Median completed requests per second", "requests_per_s"),
        "ghost_bench_peak_running_requests": ("gauge", "Median peak of vllm:num_requests_running", "peak_running"),
        "ghost_bench_e2e_latency_p99_seconds": ("gauge", "Median p99 end-to-end latency", "e2e_s_p99"),
        "ghost_bench_ttft_p99_seconds": ("gauge", "Median p99 time to first token", "ttft_s_p99"),
        "ghost_bench_failed_requests": ("gauge", "Median failed requests per level", "failed"),
    }
    out = []
    for name, (kind, help_text, key) in fams.items():
        samples = []
        for level, row in result["summary"]["levels"].items():
            for variant in ("dense", "pruned"):
                v = row[variant].get(key)
                if v is not None:
                    samples.append(({"variant": variant, "concurrency": level}, float(v)))
        out.append((name, kind, help_text, samples))
    ratio = []
    for level, row in result["summary"]["levels"].items():
        r = row["ratio"].get("output_tokens_per_s")
        if r:
            ratio.append(({"concurrency": level}, float(r["median"])))
    out.append(("ghost_bench_throughput_ratio", "gauge", "Pruned / dense output tokens per second (median)", ratio))
    return format_textfile(out)
