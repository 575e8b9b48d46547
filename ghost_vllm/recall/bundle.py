"""Ship the trained recall model inside the package: ``python -m ghost_vllm.recall.bundle [--run build/recall]``.

Writes ``ghost_vllm/recall/model/`` atomically: the final checkpoint's ``config.json`` + ``model.safetensors``, the
word-level tokenizer, the training log and config, an accuracy curve, and the card (``card.json`` + ``README.md``)
with what this module measures: dense accuracy per difficulty on held-out sequences, and the accuracy of the dense
model with its state cut to 16 channels at random (seeds 0-2) — the task must need the state.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from ghost_vllm.recall import MODEL_DIR

__all__ = ["bundle"]

log = logging.getLogger(__name__)


def _measure(model_dir: Path, sequences: int) -> dict:
    import copy

    from ghost_vllm.checkpoint import load_model
    import ghost_vllm
    from ghost_vllm.recipe import SelectionSpec
    from ghost_vllm.recall.evaluate import calibration_windows, model_predictor, recall_accuracy

    dense = load_model(model_dir)
    out = {"dense": recall_accuracy(model_predictor(dense), sequences).to_dict(), "random16": []}
    calib = calibration_windows(16, 512)
    N = int(dense.config.state_size)
    for seed in (0, 1, 2):
        cut = copy.deepcopy(dense)
        ghost_vllm.prune(cut, calib, SelectionSpec("random", 1 - 16 / N, seed=seed, allocation="uniform", refit=False), batch_size=16, progress=False)
        out["random16"].append({"seed": seed, **recall_accuracy(model_predictor(cut), sequences).to_dict()})
    return out


def _plot(log_rows: list[dict], dst: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [r for r in log_rows if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in ev], [r["acc"] for r in ev], marker=".", lw=1)
    for r in (r for r in log_rows if r["kind"] == "stage"):
        ax.axvline(r["step"], color="grey", lw=0.5)
        ax.text(r["step"], 0.02, f"{r['passed']}", fontsize=6, rotation=90)
    ax.set_xlabel("step (8,192 tokens each)")
    ax.set_ylabel("held-out query accuracy")
    ax.set_title("MQAR curriculum (lines: stage passed, pairs)")
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


def bundle(run: Path, dst: Path = MODEL_DIR, sequences: int = 256) -> dict:
    from ghost_vllm.recall.tokenizer import recall_tokenizer

    ckpt = run / "ckpt"
    state = json.loads((ckpt / "state.json").read_text())
    if not state.get("done"):
        raise SystemExit(f"error: {ckpt} has not finished its curriculum (state.json done=false); train on first")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "generation_config.json", "train_config.json", "state.json"):
        shutil.copy(ckpt / name, tmp / name)
    recall_tokenizer(json.loads((ckpt / "config.json").read_text())["vocab_size"]).save_pretrained(str(tmp))
    shutil.copy(run / "train_log.jsonl", tmp / "train_log.jsonl")
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    _plot(rows, tmp / "accuracy_curve.png")
    measured = _measure(tmp, sequences)
    n_params = sum(t.numel() for t in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(tmp / "model.safetensors")).values())
    card = {"model": "ghost_vllm recall model (MQAR)", "parameters": n_params, "train_steps": state["step"],
            "train_wall_s": state["elapsed_s"], "final_eval": state["last_eval"], "held_out_sequences_per_level": sequences,
            **measured}
    (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    d, r = measured["dense"], measured["random16"]
    r_mean = sum(x["accuracy"] for x in r) / len(r)
    lines = ["# ghost_vllm recall model", "",
             "A 2-layer Mamba2 (hidden 64, 4 heads × 32, state 128, n_groups 1, tied embeddings, "
             f"{n_params:,} parameters) trained here from scratch on synthetic multi-query associative recall "
             "(MQAR, Arora et al. 2023; generator `ghost_vllm/recall/mqar.py`): key-value pairs, then every key queried "
             "once; vocabulary 512 (0 filler, 255 keys, 256 values); sequence length max(64, 8·pairs). Curriculum 4 → 64 "
             f"pairs (advance at 97 % held-out accuracy), {state['step']:,} steps of 8,192 tokens, seed 0, one CPU "
             "thread (`python -m ghost_vllm.recall.train`, log in `train_log.jsonl`, curve `accuracy_curve.png`).", "",
             f"Held-out accuracy ({sequences} sequences per level, `ghost-vllm eval recall --recall`):", "",
             "| pairs | " + " | ".join(str(p) for p in d["per_pairs"]) + " | all |",
             "|---" * (len(d["per_pairs"]) + 2) + "|",
             "| dense | " + " | ".join(f"{v:.3f}" for v in d["per_pairs"].values()) + f" | {d['accuracy']:.3f} |"]
    for x in r:
        lines.append(f"| state cut to 16 channels at random (seed {x['seed']}) | "
                     + " | ".join(f"{v:.3f}" for v in x["per_pairs"].values()) + f" | {x['accuracy']:.3f} |")
    lines += ["", f"Cutting the state to 16 of 128 channels at random loses {100 * (d['accuracy'] - r_mean):.1f} "
                  f"points on average: the task needs the state. Chance (a constant answer): {d['chance']:.4f}."]
    (tmp / "README.md").write_text("\n".join(lines) + "\n")
    for f in tmp.iterdir():
        f.chmod(0o644)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    log.info("bundled %s → %s", run, dst)
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("build/recall"))
    ap.add_argument("--sequences", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    card = bundle(args.run, sequences=args.sequences)
    print(json.dumps({k: card[k] for k in ("parameters", "train_steps")} | {"dense": card["dense"]["accuracy"]}))


if __name__ == "__main__":
    main()
