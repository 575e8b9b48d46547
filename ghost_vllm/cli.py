"""``ghost-vllm``: prune | eval | inspect | compare | slots | bench | plan | serve. Thin: parse, call, print. User errors are one line, exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ghost_vllm.commands.helptext import PRUNE_FLAGS, recipe_default, show_defaults
from ghost_vllm.commands.io import resolve_device
from ghost_vllm.errors import GhostError
from ghost_vllm.recipe import METHODS

__all__ = ["main", "build_parser"]

log = logging.getLogger("ghost_vllm")


def _int_list(text: str | None) -> list[int] | None:
    from ghost_vllm.errors import RecipeError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise RecipeError(f"--state-sizes: {text!r} is not a comma-separated list of integers; give one size per "
                          f"layer, e.g. 32,64,96,128") from None


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="calibrate, score, truncate and write a reduced checkpoint")
    p.add_argument("recipe", nargs="?", type=Path, help="YAML recipe (configs/*.yaml); flags override its fields")
    p.add_argument("--model", help="model directory (Mamba2, Nemotron-H, Granite-4.0-H, Falcon-H1, Zamba2) or Hub id, or a "
                   "bundled model: 'reference' (Mamba2, text), 'hybrid' (Nemotron-H-shaped, text), 'recall' (MQAR)")
    p.add_argument("--method", help=" | ".join(METHODS) + " (balanced: keep every channel, project the state to the "
                                    "r = (1−κ)·N dimensions of balanced truncation)")
    p.add_argument("--sparsity", type=float, help="fraction κ of state channels to remove, in [0, 1)")
    p.add_argument("--multiple-of", type=int, help="round the kept count N' to a multiple of this")
    p.add_argument("--allocation", help="auto (pure Mamba2: adaptive, or hankel for balanced; hybrids: uniform) | "
                                        "uniform (same N' in every layer, the paper's) | adaptive (per-layer N'_l at "
                                        "the same bytes, mask Fisher) | hankel (balanced: per-layer r_l from the "
                                        "Hankel singular values, same bytes)")
    p.add_argument("--state-sizes", help="explicit per-layer N'_l, e.g. 32,64,96,128 (one per layer)")
    p.add_argument("--min-state-size", type=int, help="adaptive: smallest N'_l a layer may get (default multiple-of)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="re-solve each pruned layer's out_proj (closed form, calibration activations) so the "
                        "network's activation after each Mamba layer matches the dense one's; --no-refit: the paper's "
                        "truncation only")
    p.add_argument("--calibration", help="text/JSONL file, directory, 'reference', 'wikitext2' or 'recall' (MQAR "
                                         "training sequences, for the recall model)")
    p.add_argument("--nsamples", type=int, help="calibration windows (paper: 128)")
    p.add_argument("--seq-len", type=int, help="tokens per calibration window (paper: 128)")
    p.add_argument("--batch-size", type=int, help="calibration windows per batch")
    p.add_argument("--seed", type=int, help="seed of the window draw (and of 'random')")
    p.add_argument("--tokenizer", help="tokenizer.json, tokenizer directory or Hub id, e.g. EleutherAI/gpt-neox-20b (default: the model's)")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--out", help="output directory (default: <model>-<method><percent>)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output directory")
    p.add_argument("--state-dtype", help="int8: the checkpoint asks the plugin to cache its SSM state as int8 + a "
                                         "float32 scale per head (pure Mamba2; score it first with 'eval --state-dtype "
                                         "int8')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    show_defaults(p, {dest: recipe_default(field) for dest, field in PRUNE_FLAGS.items()})


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity (token, word, bits/byte), LAMBADA accuracy, MQAR recall accuracy")
    p.add_argument("model", help="model directory, 'reference' or 'recall'")
    p.add_argument("--data", action="append", default=[], help="text/JSONL file, directory or dataset name (repeatable)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens of each text")
    p.add_argument("--lambada", help="LAMBADA JSONL with context/target fields")
    p.add_argument("--lambada-limit", type=int, default=None, help="first N LAMBADA examples only")
    p.add_argument("--recall", action="store_true",
                   help="MQAR recall accuracy on held-out sequences (checkpoints of the recall model, e.g. 'recall')")
    p.add_argument("--recall-sequences", type=int, default=256, help="held-out sequences per difficulty level")
    p.add_argument("--tokenizer", help="tokenizer.json, tokenizer directory or Hub id, e.g. EleutherAI/gpt-neox-20b (default: the model's)")
    p.add_argument("--state-dtype", default="auto", help="score through the serving format: the SSM state stored as a "
                   "decode step stores it, after every token — auto (the checkpoint's ghost_state_dtype, else float32: "
                   "no rounding) | float32 | bfloat16 | float16 | int8 (pure Mamba2)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--no-progress", action="store_true")


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer N and state bytes per sequence vs the original")
    p.add_argument("model", help="model directory or 'reference'")
    p.add_argument("--dtype", help="state dtype to price (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="dense vs pruned: perplexity and state bytes per sequence, as a table")
    p.add_argument("models", nargs="+", help="model directories ('reference' for the bundled one); the first is the baseline")
    p.add_argument("--data", action="append", default=[], help="text/JSONL file, directory or name (repeatable)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--no-progress", action="store_true")


def _add_slots(sub) -> None:
    p = sub.add_parser("slots", help="vLLM state slots of several models in the same state memory (+ sample text)")
    p.add_argument("models", nargs="+", help="model directories ('reference' for the bundled one); the first is the baseline")
    p.add_argument("--state-memory", default="256MiB", help="cache memory given to each engine (default 256MiB)")
    p.add_argument("--prompt", action="append", default=[], help="sample prompt for the last model (repeatable)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--json", type=Path, help="also write the results as JSON here")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against real servers")
    bsub = p.add_subparsers(dest="bench_command")
    c = bsub.add_parser("capacity", help="dense vs pruned, same state memory, real server and openai client")
    c.add_argument("--dense", required=True, help="dense model directory ('reference' for the bundled one)")
    c.add_argument("--pruned", required=True, help="pruned (ghost) checkpoint directory")
    c.add_argument("--state-memory", default="256MiB", help="state/KV cache memory for each server (default 256MiB)")
    c.add_argument("--concurrency", default="1,4,16,64", help="comma-separated closed-loop client counts")
    c.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    c.add_argument("--prompt-len", type=int, default=64)
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--rate", type=float, default=None, help="open loop: Poisson arrivals at R requests/s")
    c.add_argument("--repeats", type=int, default=3, help="interleaved repeats per model")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-num-seqs", type=int, default=256)
    c.add_argument("--request-timeout", type=float, default=600.0, help="seconds before a request counts as failed")
    c.add_argument("--scrape-interval", type=float, default=0.5, help="seconds between /metrics scrapes during load")
    c.add_argument("--out", type=Path, default=Path("benchmarks/results/capacity"))
    c.add_argument("--prometheus-textfile", type=Path, default=None)
    c.add_argument("--host", default="127.0.0.1", help="address the servers listen on (default 127.0.0.1)")
    c.add_argument("--port", type=int, default=None, help="port the servers listen on, one at a time (default: free)")
    c.add_argument("--no-progress", action="store_true")


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="concurrent sequences per state memory in vLLM, before an engine starts")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="checkpoint directory (dense or ghost), Hub id (config only), 'reference', or a bundled config: "
                        "mamba2-130m, mamba2-370m, mamba2-780m, mamba2-1.3b, mamba2-2.7b, Mamba-Codestral-7B; hybrids "
                        "(Nemotron-H, Granite-4.0-H, Falcon-H1, Zamba2, 'hybrid') in exact mode")
    p.add_argument("--cache-memory", help="exact mode: vLLM's kv_cache_memory_bytes per GPU (e.g. 26100000, 4GiB)")
    p.add_argument("--gpu-memory", help="estimate mode: memory of one GPU (e.g. 80GiB, 80GB, 8e10)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="estimate mode: vLLM's fraction of GPU memory")
    p.add_argument("--overhead", default="2GiB", help="estimate mode: allowance per GPU for activations, CUDA graphs "
                                                     "and the CUDA context (default 2GiB; an assumption)")
    p.add_argument("--dtype", default="auto", help="weights and conv state: auto (checkpoint's; float32 → bfloat16 as "
                                                   "vLLM does on GPU) | float32 | bfloat16 | float16")
    p.add_argument("--mamba-ssm-cache-dtype", default="auto", help="SSM state: auto (= --dtype) | float32 | bfloat16 | float16")
    p.add_argument("--state-dtype", default="auto", help="the plugin's SSM state: auto (the checkpoint's "
                   "ghost_state_dtype, else --mamba-ssm-cache-dtype) | int8 (int8 + a float32 scale per head; pure Mamba2)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=None, help="hybrids: tokens per sequence priced (default 4096; "
                   "attention KV grows with it); recorded for pure Mamba2, whose state does not")
    p.add_argument("--platform", choices=("cuda", "cpu"), default="cuda", help="hybrids: whose page alignment (vLLM "
                   "on GPU or the CPU backend; default cuda)")
    p.add_argument("--no-prefix-caching", action="store_true", help="hybrids: price --no-enable-prefix-caching (one "
                   "Mamba block per group; vLLM's default for hybrids is on: three)")
    p.add_argument("--sparsity", help="what-if for a dense model: comma-separated κ in [0, 1) (default 0,0.25,0.5,0.75)")
    p.add_argument("--multiple-of", type=int, default=1, help="what-ifs: round N' like 'prune --multiple-of' (default 1)")
    p.add_argument("--target-seqs", type=int, help="the least uniform sparsity whose memory holds N concurrent sequences")
    p.add_argument("--stock-padding", action="store_true", help="price stock vLLM, which pads per-layer pages to the "
                                                               "largest (without ghost_vllm's patch)")
    p.add_argument("--results", type=Path, default=None, help="benchmarks/results directory for measured quality")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per model and variant)")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible vLLM server for a (ghost) checkpoint; extra args go to vLLM",
                       add_help=False)
    p.add_argument("model")


SERVE_HELP = """usage: ghost-vllm serve MODEL [--auto-max-num-seqs] [--state-dtype int8] [vLLM server options ...]

vLLM's OpenAI-compatible server for a (ghost) checkpoint. Before the engine starts it checks the checkpoint, the
tensor/pipeline-parallel sizes, --mamba-backend against the state sizes, and whether --max-num-seqs fits the Mamba
cache blocks (one line, exit 2 when something cannot run); on CPU with no cache size it chooses one, and with TP/PP
it binds one core group per worker. Then it runs `python -m vllm.entrypoints.openai.api_server --model MODEL ...`.

  MODEL                 checkpoint directory, Hub id (org/name) or bundled name (reference, hybrid, recall)
  --auto-max-num-seqs   pass the largest --max-num-seqs the state memory holds when the requested one does not fit
  --state-dtype int8    cache the SSM state as int8 + a float32 scale per head (pure Mamba2; default: the
                        checkpoint's ghost_state_dtype, else vLLM's --mamba-ssm-cache-dtype); passed to vLLM as
                        --hf-overrides, so plain `vllm serve` takes it that way too
  vLLM options          e.g. --port 8000 --dtype float32 --kv-cache-memory-bytes 64MiB --tensor-parallel-size 2;
                        all of them: python -m vllm.entrypoints.openai.api_server --help"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ghost-vllm", description="GHOST state pruning for Mamba2, served with vLLM")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command")
    _add_prune(sub)
    _add_eval(sub)
    _add_inspect(sub)
    _add_compare(sub)
    _add_slots(sub)
    _add_bench(sub)
    _add_plan(sub)
    _add_serve(sub)
    for name, p in sub.choices.items():
        if name != "prune":  # prune's defaults are the recipe's (shown where it is built)
            show_defaults(p)
            for action in p._actions:  # bench's sub-commands
                if isinstance(action, argparse._SubParsersAction):
                    for c in action.choices.values():
                        show_defaults(c)
    return ap


def cmd_prune(args: argparse.Namespace) -> int:
    from ghost_vllm.commands.prune import run_prune
    from ghost_vllm.recipe import load_recipe

    overrides = {field: getattr(args, dest) for dest, field in PRUNE_FLAGS.items()}
    overrides["selection.state_sizes"] = _int_list(args.state_sizes)
    overrides["calibration.seed"] = args.seed
    recipe = load_recipe(args.recipe, overrides)
    out = run_prune(recipe, device=resolve_device(recipe.model.device), progress=not args.no_progress)
    print(out.summary())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ghost_vllm.commands.eval import run_eval

    return run_eval(args)


def cmd_slots(args: argparse.Namespace) -> int:
    from ghost_vllm.commands.slots import run_slots

    return run_slots(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from ghost_vllm.commands.bench import run_bench

    return run_bench(args)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ghost_vllm.inspection import format_inspection, inspect_checkpoint
    from ghost_vllm.sources import require_model_dir

    info = inspect_checkpoint(require_model_dir(args.model), dtype=args.dtype)
    print(json.dumps(info, indent=1) if args.json else format_inspection(info))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ghost_vllm.commands.compare import compare_models, format_comparison

    if not args.data:
        raise GhostError("compare: pass at least one --data PATH_OR_NAME")
    rows = compare_models(args.models, args.data, args.seq_len, resolve_device(args.device), args.max_tokens,
                          progress=not args.no_progress)
    print(format_comparison(rows))
    if args.json:
        from ghost_vllm.commands.io import write_json_atomic

        write_json_atomic(args.json, rows)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ghost_vllm.commands.plan import dump_json, parse_sparsities, results_dir, run_plan
    from ghost_vllm.errors import RecipeError
    from ghost_vllm.planner.plan import PlanSettings
    from ghost_vllm.units import parse_size

    if args.multiple_of < 1:
        raise RecipeError(f"--multiple-of {args.multiple_of}: must be >= 1")
    settings = PlanSettings(
        cache_memory=parse_size(args.cache_memory, "--cache-memory") if args.cache_memory is not None else None,
        gpu_memory=parse_size(args.gpu_memory, "--gpu-memory") if args.gpu_memory is not None else None,
        gpu_memory_utilization=args.gpu_memory_utilization, overhead=parse_size(args.overhead, "--overhead")
        if args.overhead not in ("0", "0B") else 0, dtype=args.dtype, mamba_ssm_cache_dtype=args.mamba_ssm_cache_dtype,
        state_dtype=args.state_dtype, tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
        multiple_of=args.multiple_of, padded=args.stock_padding, results=results_dir(args.results),
        platform=args.platform, prefix_caching=False if args.no_prefix_caching else None,
    )
    rows, text = run_plan(args.models, settings, parse_sparsities(args.sparsity), args.target_seqs)
    print(dump_json(rows) if args.json else text)
    return 0


def cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    from ghost_vllm.commands.serve import run_serve

    return run_serve(args.model, extra)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"] and any(a in ("-h", "--help") for a in argv[1:]):
        print(SERVE_HELP)  # serve passes every other flag to vLLM, so argparse cannot print its help
        return 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.command in ("prune", "eval", "compare"):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the "mamba_ssm not installed, using the torch path" notices
        hf_logging.disable_progress_bar()
    if args.version:
        from ghost_vllm import __version__

        print(f"ghost-vllm {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return cmd_serve(args, extra)
        commands = {"prune": cmd_prune, "eval": cmd_eval, "inspect": cmd_inspect, "compare": cmd_compare,
                    "slots": cmd_slots, "bench": cmd_bench, "plan": cmd_plan}
        return commands[args.command](args)
    except GhostError as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ghost-vllm plan … | head`: the reader left; say nothing more, like other Unix tools
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 141
    except Exception as e:  # an internal failure: one line unless --debug
        if args.debug:
            raise
        print(f"error: internal {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
