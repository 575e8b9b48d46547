"""``ghost-vllm eval DIR``: perplexity, LAMBADA and MQAR recall of one checkpoint."""

from __future__ import annotations

import argparse

from ghost_vllm.commands.io import resolve_device
from ghost_vllm.errors import GhostError

__all__ = ["run_eval"]


def run_eval(args: argparse.Namespace) -> int:
    from ghost_vllm.checkpoint import load_model, load_tokenizer
    from ghost_vllm.sources import require_model_dir
    from ghost_vllm.evaluate import lambada_accuracy, perplexity

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
    if args.recall:
        from ghost_vllm.checkpoint import read_config

        vocab = int(read_config(model_dir).get("vocab_size", 0))
        if vocab != 512:
            raise GhostError(f"--recall: {model_dir} has vocab_size {vocab}; MQAR needs the recall model's 512 tokens "
                             f"(evaluate 'recall' or a checkpoint pruned from it)")
    tok = load_tokenizer(model_dir, args.tokenizer) if (args.data or args.lambada) else None
    model = load_model(model_dir, args.dtype, resolve_device(args.device))
    report: dict = {"model": str(model_dir), "perplexity": [], "lambada": None, "recall": None}
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
    if args.json:
        from ghost_vllm.commands.io import write_json_atomic

        write_json_atomic(args.json, report)
    return 0
