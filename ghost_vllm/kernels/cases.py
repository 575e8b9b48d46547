"""Every (heads, groups, state size) shape on one TP rank that the product hands vLLM's kernels.

Sources, read from the repository (nothing restated here):

* model shapes: the bundled reference and hybrid models' configs, the released Mamba2 sizes and Codestral
  (:data:`ghost_vllm.mamba.mamba_ssm_format.REAL_CONFIGS`, ``CODESTRAL_7B``) and the released hybrid configs
  (``ghost_vllm/families/configs/*.json``), each through its family's layout;
* state sizes: the shipped recipes' uniform N' (``configs/*.yaml``: :func:`~ghost_vllm.selection.kept_count`), the
  sweep's uniform cuts (κ 0.25 … 0.875), the per-layer sizes the adaptive allocator chose for the reference model
  (``benchmarks/results/budgets/budgets.json``; κ 0.5 is the shipped ``make run`` checkpoint), the per-layer ranks
  balanced truncation chose for it (``benchmarks/results/recipes/recipes.json``: a projected state's kernels run at
  d_state = r_l) and the allocator's smallest size (8);
* TP shards: ``H/tp`` heads and ``(G + extra_groups(G, tp))/tp`` groups per rank, as vLLM shards a Mamba2 mixer.

The interpreter runs each program of a grid in Python, so a case keeps the rank's groups and the ratio heads/group
(which decides the group each head reads, ``pid_h // (H/G)``) up to :data:`MAX_HEADS_PER_GROUP` (1 for ranks of 4 or
more groups), and the head_dim up to :data:`MAX_HEAD_DIM`; the GPU script (``benchmarks/gpu_kernels.py``) runs the full shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ghost_vllm.kernels.check import KernelCase

__all__ = ["ModelShape", "product_shapes", "product_state_sizes", "shard", "interpreter_cases", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TP_SIZES = (1, 2, 4)
SWEEP_SPARSITIES = (0.25, 0.5, 0.75, 0.875)
MAX_HEADS_PER_GROUP = 2
MAX_HEAD_DIM = 32


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_heads: int
    head_dim: int
    n_groups: int
    state_size: int  # the dense d_state
    conv_kernel: int = 4


def _shape(name: str, cfg: dict) -> ModelShape:
    from ghost_vllm.families import family_for_config

    lay = family_for_config(cfg, name).layout(cfg)
    return ModelShape(name, lay.num_heads, lay.head_dim, lay.n_groups, lay.state_size, lay.conv_kernel)


def product_shapes() -> list[ModelShape]:
    from ghost_vllm import reference
    from ghost_vllm.mamba.mamba_ssm_format import REAL_CONFIGS, hf_config_from_mamba_ssm, mamba_ssm_config

    shapes = [_shape("reference", json.loads((reference.MODEL_DIR / "config.json").read_text())),
              _shape("hybrid", json.loads((reference.HYBRID_MODEL_DIR / "config.json").read_text()))]
    for name in [*REAL_CONFIGS, "Mamba-Codestral-7B"]:
        shapes.append(_shape(name, {"model_type": "mamba2", **hf_config_from_mamba_ssm(mamba_ssm_config(name))}))
    for path in sorted((REPO_ROOT / "ghost_vllm/families/configs").glob("*.json")):
        shapes.append(_shape(path.stem, json.loads(path.read_text())))
    return shapes


def product_state_sizes(dense: int) -> dict[int, list[str]]:
    """N' → where it comes from, for a model whose dense d_state is ``dense``."""
    from ghost_vllm.selection import kept_count

    sizes: dict[int, list[str]] = {dense: ["dense"]}

    def add(n: int, why: str) -> None:
        sizes.setdefault(int(n), []).append(why)

    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        sel = (yaml.safe_load(path.read_text()) or {}).get("selection")
        if isinstance(sel, dict) and "sparsity" in sel:
            add(kept_count(dense, float(sel["sparsity"]), int(sel.get("multiple_of", 1))), f"{path.name} uniform")
    for k in SWEEP_SPARSITIES:
        add(kept_count(dense, k, 8), f"uniform κ {k}")
    if dense == 128:  # the reference model's adaptive budgets (state 128)
        budgets = json.loads((REPO_ROOT / "benchmarks/results/budgets/budgets.json").read_text())
        for row in budgets["summary"]:
            for layer, n in enumerate(row["adaptive_sizes"]):
                add(n, f"reference adaptive κ {row['sparsity']} layer {layer}")
        # balanced truncation: the kernels run at each layer's rank r_l (benchmarks/results/recipes/recipes.json)
        recipes = json.loads((REPO_ROOT / "benchmarks/results/recipes/recipes.json").read_text())
        for row in recipes["rows"]:
            if row["variant"].startswith("balanced"):
                for layer, r in enumerate(row["state_sizes"]):
                    add(r, f"reference {row['variant']} κ {row['sparsity']} layer {layer} (rank)")
    add(8, "--min-state-size 8")
    return dict(sorted(sizes.items(), reverse=True))


def shard(shape: ModelShape, tp: int) -> tuple[int, int] | None:
    """(heads, groups) on one of ``tp`` ranks, or None where vLLM refuses the split (tp must divide the heads, and
    the groups unless n_groups is 1)."""
    from ghost_vllm.mamba.layout import extra_groups, tp_shard_problem

    if tp_shard_problem(shape.num_heads, shape.n_groups, tp):
        return None
    groups = shape.n_groups + extra_groups(shape.n_groups, tp)
    return shape.num_heads // tp, groups // tp


def _case_key(shape: ModelShape, tp: int, n: int) -> tuple[int, int, int, int, int] | None:
    s = shard(shape, tp)
    if s is None:
        return None
    heads, groups = s
    per_group = min(heads // groups, MAX_HEADS_PER_GROUP if groups <= 2 else 1)
    return groups * per_group, min(shape.head_dim, MAX_HEAD_DIM), groups, n, shape.conv_kernel


def interpreter_cases() -> list[KernelCase]:
    """The interpreter test's cases: every rank shape (groups, heads/group capped) of every model at TP 1/2/4 with
    its dense and shipped uniform N', and every N' the product emits on the reference model's shape at TP 1 and 2.
    Rank shapes that coincide after capping are one case whose label lists them all."""
    labels: dict[tuple, list[str]] = {}

    def take(shape: ModelShape, tp: int, n: int, why: str) -> None:
        key = _case_key(shape, tp, n)
        if key is not None:
            heads, groups = shard(shape, tp)  # type: ignore[misc]
            labels.setdefault(key, []).append(f"{shape.name} TP{tp} ({heads}h/{groups}g) N'={n} {why}")

    shapes = product_shapes()
    for shape in shapes:
        sizes = product_state_sizes(shape.state_size)
        for tp in TP_SIZES:
            for n, why in sizes.items():
                if why[0] == "dense" or any(w.endswith(".yaml uniform") for w in why):
                    take(shape, tp, n, why[0])
    reference = next(s for s in shapes if s.name == "reference")
    for tp in (1, 2):
        for n, why in product_state_sizes(reference.state_size).items():
            take(reference, tp, n, why[0])
    return [KernelCase(label="; ".join(names), num_heads=h, head_dim=p, n_groups=g, state_size=n, conv_kernel=k)
            for (h, p, g, n, k), names in labels.items()]
