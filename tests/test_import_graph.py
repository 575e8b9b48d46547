"""The import graph of ``ghost_vllm/`` and ``patches/`` (function-local imports counted): no cycle, and no module
imports a later stage than its own. The stages are :data:`LAYERS` — the one place the layering is declared
(docs/architecture.md explains it); a module belongs to the longest prefix that names it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module may import its own stage and the stages before it, never a later one
LAYERS: list[tuple[str, ...]] = [
    # facts: errors, units, memory housekeeping
    ("ghost_vllm.errors", "ghost_vllm.units", "ghost_vllm.memory"),
    # bundled assets: where the reference and recall models and texts are, the MQAR task and its scoring
    ("ghost_vllm.reference", "ghost_vllm.recall", "ghost_vllm.recall.mqar", "ghost_vllm.recall.evaluate",
     "ghost_vllm.recall.tokenizer", "ghost_vllm.recall.train_config", "ghost_vllm.reference.tokenizer",
     "ghost_vllm.reference.wikitext", "ghost_vllm.reference.train_config"),
    # the mixer's math: layout, reference scan, projection, int8 format, surgery, reductions, selection
    ("ghost_vllm.mamba", "ghost_vllm.surgery", "ghost_vllm.reduce", "ghost_vllm.selection"),
    # the on-disk format and the recipe
    ("ghost_vllm.ghost_format", "ghost_vllm.recipe"),
    # reading weights, the families that load them, models by name, checkpoints, state bytes
    ("ghost_vllm.weights", "ghost_vllm.mamba.mamba_ssm_format"),
    ("ghost_vllm.families",),
    ("ghost_vllm.sources",),
    ("ghost_vllm.checkpoint", "ghost_vllm.state"),
    # calibration text and statistics, scores
    ("ghost_vllm.calib", "ghost_vllm.stats", "ghost_vllm.evaluate"),
    ("ghost_vllm.scoring",),
    # the pruning stages and the library entry
    ("ghost_vllm.allocation", "ghost_vllm.refit"),
    ("ghost_vllm.pipeline",),
    ("ghost_vllm.pruning",),
    # what is built with the pipeline: training and bundling the assets, evaluation simulations
    ("ghost_vllm.reference.train", "ghost_vllm.reference.prepare", "ghost_vllm.recall.train",
     "ghost_vllm.recall.bundle", "ghost_vllm.loadtest.state_formats"),
    # accounting and planning
    ("ghost_vllm.inspection", "ghost_vllm.planner"),
    # the engine side: the server's kernels, the plugin's cache spec, vLLM patches, the plugin
    ("ghost_vllm.kernels.int8_state", "ghost_vllm.plugin.spec"),
    ("ghost_vllm_patches",),
    ("ghost_vllm.plugin",),
    # tools around the engine: load tests, commands, kernel checks, the CLI
    ("ghost_vllm.loadtest",),
    ("ghost_vllm.commands",),
    ("ghost_vllm.kernels",),
    ("ghost_vllm.cli",),
    # the package's own __init__ (lazy entry points; its children import it first anyway)
    ("ghost_vllm",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for top, name in (("ghost_vllm", "ghost_vllm"), ("patches", "ghost_vllm_patches")):
        for p in (ROOT / top).rglob("*.py"):
            parts = [name, *p.relative_to(ROOT / top).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module → the project modules it imports anywhere in its body (top level or inside functions)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(head + ([node.module] if node.module else []))
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for n in names:
                target = resolve(n)
                if target and target != mod and not mod.startswith(target + "."):  # a package's own __init__
                    edges[mod].add(target)
    return edges


def layer_of(mod: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    if layer is None:
        raise AssertionError(f"{mod} is in no layer of LAYERS; add it where it belongs in the data flow")
    return layer


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(modules: dict[str, Path]) -> list[str]:
    edges = import_graph(modules)
    bad = [f"cycle: {' ↔ '.join(c)}" for c in cycles(edges)]
    for mod in sorted(modules):
        for target in sorted(edges.get(mod, ())):
            if layer_of(target) > layer_of(mod):
                bad.append(f"upward: {mod} (stage {layer_of(mod)}) imports {target} (stage {layer_of(target)})")
    return bad


def test_no_cycle_and_no_upward_import():
    bad = violations(_modules())
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("plant", ["cycle", "upward"])
def test_the_check_fails_on_a_planted_violation(tmp_path, plant):
    """A copy of the tree with one planted import: the check must catch it."""
    modules = dict(_modules())
    victim = tmp_path / "units.py"
    text = modules["ghost_vllm.units"].read_text(encoding="utf-8")
    if plant == "cycle":  # errors ← units already; units → errors → units closes a loop
        errors = tmp_path / "errors.py"
        errors.write_text(modules["ghost_vllm.errors"].read_text(encoding="utf-8") +
                          "\n\ndef _planted():\n    from ghost_vllm.units import parse_size\n", encoding="utf-8")
        modules["ghost_vllm.errors"] = errors
    else:  # a fact module reaching for the plugin, inside a function
        text += "\n\ndef _planted():\n    from ghost_vllm.plugin import metrics\n"
    victim.write_text(text, encoding="utf-8")
    modules["ghost_vllm.units"] = victim
    bad = violations(modules)
    assert any(b.startswith(plant) for b in bad), bad

