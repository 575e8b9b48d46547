"""``ghost-vllm eval DIR``: perplexity, LAMBADA and MQAR recall of one checkpoint — with ``--state-dtype`` through
the serving format: every mixer runs the reference scan and stores its SSM state in that format after every token,
as the engine's decode step does (:mod:`ghost_vllm.loadtest.state_formats`; for int8 the one definition in
:mod:`ghost_vllm.mamba.int8_state`). A prefill rounds only at the end of each chunk, so this is the cost of a long
generation — the pessimistic side."""

from __future__ import annotations

import argparse

from ghost_vllm.commands.io import resolve_device
from ghost_vllm.errors import GhostError

__all__ = ["run_eval"]


def run_eval(args: argparse.Namespace) -> int:
    from ghost_vllm.checkpoint import load_model, load_tokenizer
    from ghost_vllm.sources import require_model_dir

    if not args.data and not args.lambada and not args.recall:
        raise GhostError("eval: nothing to evaluate; pass --data PATH_OR_NAME, --lambada PATH and/or --recall")
    if args.recall_sequences < 1:
        raise GhostError(f"--recall-sequences {args.recall_sequences}: must be >= 1")
    from ghost_vllm.calib.sources import check_source

    for source in args.data:
        check_source(source)
    if args.lambada:
        check_source(args.lambada, "--lambada")
    model_dir = require_model_dir(args.model)
    state_dtype = _state_dtype(args.state_dtype, model_dir)
    if args.recall:
        from ghost_vllm.sources import read_config

        vocab = int(read_config(model_dir).get("vocab_size", 0))
        if vocab != 512:
            raise GhostError(f"--recall: {model_dir} has vocab_size {vocab}; MQAR needs the recall model's 512 tokens "
                             f"(evaluate 'recall' or a checkpoint pruned from it)")
    tok = load_tokenizer(model_dir, args.tokenizer) if (args.data or args.lambada) else None
    model = load_model(model_dir, args.dtype, resolve_device(args.device))
    from ghost_vllm.loadtest.state_formats import serving_state

    with serving_state(model, state_dtype):
        report = _evaluate(args, model, tok, model_dir, state_dtype)
    if args.json:
        from ghost_vllm.commands.io import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


def _state_dtype(given: str, model_dir) -> str:
    """The SSM-state format to score through (``auto``: the checkpoint's ``ghost_state_dtype``, else float32)."""
    from ghost_vllm.sources import read_config
    from ghost_vllm.families import model_family
    from ghost_vllm.ghost_format import config_state_dtype

    from ghost_vllm.units import STATE_DTYPE_TABLE

    choices = ("auto", *STATE_DTYPE_TABLE)
    if given not in choices:
        raise GhostError(f"--state-dtype {given!r}: use one of {', '.join(choices)}")
    cfg = read_config(model_dir)
    chosen = (config_state_dtype(cfg, f"{model_dir}/config.json") or "float32") if given == "auto" else given
    family = model_family(cfg, f"{model_dir}/config.json")
    if chosen != "float32" and not family.int8_state:
        raise GhostError(f"--state-dtype {chosen}: scoring through a stored state format is implemented for pure "
                         f"Mamba2 models, not {family.name}; leave --state-dtype out")
    return chosen


def _evaluate(args: argparse.Namespace, model, tok, model_dir, state_dtype: str) -> dict:
    from ghost_vllm.evaluate import lambada_accuracy, perplexity

    report: dict = {"model": str(model_dir), "state_dtype": state_dtype, "perplexity": [], "lambada": None,
                    "recall": None}
    if state_dtype != "float32":
        print(f"SSM state stored as {state_dtype} after every token (the serving format's decode-time cost)")
    for source in args.data:
        r = perplexity(model, tok, source, seq_len=args.seq_len, batch_size=args.batch_size,
                       max_tokens=args.max_tokens, progress=not args.no_progress)
        report["perplexity"].append(r.to_dict())
        print(f"{source}: seq_len {r.seq_len}, {r.tokens} tokens, {r.words} words | token ppl {r.token_ppl:.3f} | "
              f"word ppl {r.word_ppl:.3f} | bits/byte {r.bits_per_byte:.4f}")
    if args.lambada:
        lr = lambada_accuracy(model, tok, args.lambada, limit=args.lambada_limit, progress=not args.no_progress)
        report["lambada"] = lr.to_dict()
        print(f"{args.lambada}: LAMBADA accuracy {lr.accuracy:.4f} ({lr.correct}/{lr.examples})")
    if args.recall:
        from ghost_vllm.recall.evaluate import model_predictor, recall_accuracy

        rr = recall_accuracy(model_predictor(model), args.recall_sequences)
        report["recall"] = rr.to_dict()
        report["accuracy"] = rr.accuracy
        print(f"MQAR recall: accuracy {rr.accuracy:.4f} over {rr.queries:,} queries ({args.recall_sequences} held-out "
              f"sequences per level; chance {rr.chance:.4f})")
        print("  pairs     " + "  ".join(f"{p:>6}" for p in rr.per_pairs))
        print("  accuracy  " + "  ".join(f"{v:6.3f}" for v in rr.per_pairs.values()))
        print("  distance  " + "  ".join(f"{k}: {v:.3f}" for k, v in rr.per_distance.items()))
    return report
