"""vLLM 0.33.0's own cache planning, run on this CPU without a GPU, against ghost_vllm's planner (written for 0.32).

    python benchmarks/vllm033_check.py --tree DIR     # → benchmarks/results/vllm033/results.{json,md}

``--tree`` is the directory that holds an unzipped ``vllm/`` Python tree of the GPU wheel (``pip download --no-deps
vllm==0.33.0``, then unzip ``vllm/*.py``; no ``.so``). The checks run in a subprocess with ``PYTHONPATH=<tree>``, so
``import vllm`` there is that tree's pure-Python code (the project's venv supplies torch, transformers and
ghost_vllm; ``ghost_vllm.plugin.spec`` then subclasses that tree's ``MambaSpec``). Nothing is allocated and no model is
built: the per-layer KV-cache specs are made the way the model layers make them, with the tree's own calculators, and
handed to the tree's own engine-core planning (``get_global_kv_cache_groups`` → ``resolve_kv_cache_layout`` →
``get_kv_cache_configs``, as ``EngineCore._initialize_kv_caches`` calls them). Point ``--tree`` at an unzipped 0.32.0
GPU wheel (with ``--out benchmarks/results/vllm032-gpu``) to run the same checks on 0.32.0.

Checks (each row says what it compared):

* ``patch-hash``: sha256 of ``inspect.getsource`` of each patch target in the tree vs the patch's ``target_sha256``;
* ``mamba2``: pure Mamba2 — dense, a uniform ghost N', a per-layer ghost (``GhostMambaSpec``: one
  ``UniformTypeKVCacheSpecs`` group, block = Σ_l page_l) — groups, layout, bytes per block and ``num_blocks`` for
  several cache sizes vs ``ghost_vllm.planner.arith.block_math`` / ``num_blocks``, and start-up refusing fewer than 2
  blocks; the same per-layer sizes with stock ``MambaSpec`` (what ``--stock-padding`` prices) are compared per
  sequence, since vLLM lays them out as several groups of padded pages;
* ``ssu-patch``: with the tree's ``initialize_mamba_ssu_backend``, the per-layer group leaves the state-update backend
  uninitialised; ``patches/ssu_backend_uniform_type.py``'s ``install()`` makes it initialise (``apply_patch``'s
  version and source-hash gate for the tree's version is reported too);
* ``hybrid``: the released and tiny hybrid configs of ``tests/test_hybrid_arith.py`` (its helpers ``_cfg``,
  ``_engine_config``, ``_vllm_specs``, ``_state_sizes``, reused), N and N/2, prefix caching off ("none") and on
  ("align"), CUDA (FlashAttention) and the tree's CpuPlatform: block size, Mamba padding, groups, ``num_blocks`` and
  blocks per request vs ``ghost_vllm.planner.hybrid.hybrid_layout``. The real ``MambaMixer2.get_kv_cache_spec`` adds
  ``num_prefill_checkpoint_blocks=1`` (0.32 and 0.33); the rows say what that does to the per-request budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "vllm033"
GiB = 2**30
MODULES = ("v1/kv_cache_interface.py", "v1/core/kv_cache_planning.py", "v1/core/kv_cache_utils.py",
           "v1/core/kv_cache_config_builder.py", "model_executor/layers/mamba/mamba_utils.py",
           "model_executor/layers/mamba/mamba_mixer2.py", "model_executor/layers/mamba/abstract.py",
           "model_executor/layers/mamba/ops/ssu_dispatch.py", "platforms/interface.py", "platforms/cpu.py",
           "model_executor/models/config.py", "v1/attention/backends/utils.py", "config/compilation.py")


# ---------------------------------------------------------------------------------------------------------------------
# child: runs with PYTHONPATH=<tree>
# ---------------------------------------------------------------------------------------------------------------------

def _engine_vc(cache, max_model_len: int, tp: int):
    """A stand-in VllmConfig with what the engine-core planning functions read (no speculative decoding, no
    HiSparse, hybrid KV-cache manager on, one worker per TP rank)."""
    import types

    return types.SimpleNamespace(
        cache_config=cache, speculative_config=None, num_prefill_lookahead_tokens=0, kv_transfer_config=None,
        scheduler_config=types.SimpleNamespace(disable_hybrid_kv_cache_manager=False),
        attention_config=types.SimpleNamespace(hisparse_config=None),
        parallel_config=types.SimpleNamespace(tensor_parallel_size=tp, decode_context_parallel_size=1),
        model_config=types.SimpleNamespace(max_model_len=max_model_len, original_max_model_len=max_model_len,
                                           supports_kv_cache_grouping=False))


def _resolve_layout(vc, specs: dict, backends: list, tp: int = 1) -> str:
    """``resolve_kv_cache_layout`` as the engine core calls it, with the layouts the workers' backends support."""
    from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts, resolve_kv_cache_layout

    vc.cache_config.kv_cache_layout = None
    layout = resolve_kv_cache_layout(vc, [[m.name for m in get_supported_kv_cache_layouts(backends)]] * tp,
                                     list(specs.values()) * tp)
    vc.cache_config.kv_cache_layout = layout.name
    return layout.name


def _planning():
    """The module holding the planning functions: ``kv_cache_planning`` (0.33) or ``kv_cache_utils`` (0.32)."""
    try:
        from vllm.v1.core import kv_cache_planning as planning
    except ImportError:  # vLLM 0.32: planning lived in kv_cache_utils
        from vllm.v1.core import kv_cache_utils as planning
    return planning


def _plan(vc, specs: dict, memory: int, backends: list, tp: int = 1):
    """EngineCore._initialize_kv_caches' planning: layout, groups, per-worker configs (one worker per TP rank)."""
    planning = _planning()
    workers = [dict(specs) for _ in range(tp)]
    layout = _resolve_layout(vc, specs, backends, tp)
    if hasattr(planning, "get_global_kv_cache_groups"):  # 0.33: groups first, then the configs
        groups = planning.get_global_kv_cache_groups(vc, workers)
        kv = planning.get_kv_cache_configs(vc, workers, [memory] * tp, groups)[0]
    else:  # 0.32: get_kv_cache_configs groups the layers itself
        kv = planning.get_kv_cache_configs(vc, workers, [memory] * tp)[0]
        groups = kv.kv_cache_groups
    return layout, groups, kv


def _mixer_spec(spec_cls, shapes, dtypes, block_size: int, mode: str):
    """``MambaMixer2.get_kv_cache_spec`` (MambaBase's spec, then ``num_prefill_checkpoint_blocks=1``,
    ``prefill_checkpoint_alignment=1``); ``spec_cls`` GhostMambaSpec for ``GhostMambaMixer2``."""
    return spec_cls(shapes=tuple(shapes), dtypes=tuple(dtypes), block_size=block_size, mamba_cache_mode=mode,
                    num_prefill_checkpoint_blocks=1, prefill_checkpoint_alignment=1)


def _mamba2_rows(rows: list) -> dict:
    import math

    import torch
    from vllm.config import CacheConfig
    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateDtypeCalculator, MambaStateShapeCalculator
    from vllm.v1.attention.backends.mamba2_attn import Mamba2AttentionBackend
    from vllm.v1.kv_cache_interface import MambaSpec, UniformTypeKVCacheSpecs

    from ghost_vllm.mamba.mamba_ssm_format import hf_config_from_mamba_ssm, mamba_ssm_config
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.planner.arith import block_math, num_blocks
    from ghost_vllm.plugin.spec import GhostMambaSpec
    from ghost_vllm.reference import MODEL_DIR

    ref = json.loads((MODEL_DIR / "config.json").read_text())
    models = {"reference": (ref, [120, 48, 72, 64, 40, 40], ("float32", "auto"), (1, 2)),
              "mamba2-2.7b": (hf_config_from_mamba_ssm(mamba_ssm_config("mamba2-2.7b")),
                              [128, 40, 64, 96] * 16, ("bfloat16", "float32"), (1, 4))}
    max_model_len = 4096
    kept = {}
    for name, (cfg, per_layer, (dtype, ssm), tps) in models.items():
        shape = InProjLayout.from_config(cfg)
        n, L = int(cfg["state_size"]), int(cfg["num_hidden_layers"])
        variants = {"dense": ([n] * L, MambaSpec, False), "uniform N/2": ([n // 2] * L, MambaSpec, False),
                    "per-layer ghost": (per_layer, GhostMambaSpec, False),
                    "per-layer stock": (per_layer, MambaSpec, True)}
        for tp in tps:
            for variant, (sizes, spec_cls, padded) in variants.items():
                dts = MambaStateDtypeCalculator.mamba2_state_dtype(getattr(torch, dtype), "auto", ssm)
                specs = {}
                for i, s in enumerate(sizes):
                    shapes = MambaStateShapeCalculator.mamba2_state_shape(
                        tp_world_size=tp, intermediate_size=shape.intermediate_size, n_groups=shape.n_groups,
                        num_heads=shape.num_heads, head_dim=shape.head_dim, state_size=s,
                        conv_kernel=shape.conv_kernel)
                    # mode "none": MambaModelConfig sets mamba_block_size = max_model_len
                    specs[f"backbone.layers.{i}.mixer"] = _mixer_spec(spec_cls, shapes, dts, max_model_len, "none")
                ours = block_math(shape, sizes, dtype, dtype if ssm == "auto" else ssm, tp, padded=padded)
                b = ours.bytes_per_block
                vc = _engine_vc(CacheConfig(), max_model_len, tp)
                got, layouts, kinds = {}, set(), set()
                for memory in sorted({2 * b, 7 * b - 1, 7 * b, 26_100_000, 80 * GiB}):
                    if memory < 2 * b:  # below the planner's start-up minimum (checked below)
                        continue
                    layout, groups, kv = _plan(vc, specs, memory, [Mamba2AttentionBackend], tp)
                    layouts.add(layout)
                    kinds.add(tuple(type(g.kv_cache_spec).__name__ + (
                        f"[{type(g.kv_cache_spec.first_spec).__name__}]"
                        if isinstance(g.kv_cache_spec, UniformTypeKVCacheSpecs) else "") for g in groups))
                    per_req = sum(math.ceil(g.kv_cache_spec.max_memory_usage_bytes(vc)
                                            / g.kv_cache_spec.page_size_bytes) for g in groups)
                    bpb = kv.kv_cache_tensors[0].size // kv.num_blocks  # every tensor aliases the one backing
                    nb = num_blocks(memory, b)
                    got[memory] = {"vllm": {"num_blocks": kv.num_blocks, "bytes_per_block": bpb,
                                            "groups": len(groups), "blocks_per_request": per_req,
                                            "sequences": (kv.num_blocks - 1) // per_req},
                                   "planner": {"num_blocks": nb, "bytes_per_block": b, "sequences": nb - 1}}
                    if variant == "per-layer ghost" and tp == 1 and name == "reference":
                        kept["ghost_kv"] = kv
                refused = None
                if not padded:  # start-up needs the null block + one request: 2 blocks of the planner's size
                    try:
                        _plan(vc, specs, 2 * b - 1, [Mamba2AttentionBackend], tp)
                    except ValueError as e:
                        refused = str(e).split("(")[0].strip()
                expect = ("UniformTypeKVCacheSpecs[GhostMambaSpec]",) if spec_cls is GhostMambaSpec else ("MambaSpec",)
                if padded:  # vLLM's own layout of stock per-layer specs: say it, compare bytes per sequence
                    ok = len(kinds) == 1 and all(
                        g["vllm"]["bytes_per_block"] * g["vllm"]["blocks_per_request"] == b for g in got.values())
                else:
                    ok = kinds == {expect} and refused is not None and all(
                        g["vllm"]["num_blocks"] == g["planner"]["num_blocks"] and g["vllm"]["bytes_per_block"] == b
                        and g["vllm"]["blocks_per_request"] == 1 for g in got.values())
                top = got[80 * GiB]["vllm"]
                rows.append({"check": "mamba2", "model": name, "variant": variant, "tp": tp, "dtype": dtype,
                             "ssm_dtype": ssm, "state_sizes": list(sizes) if len(set(sizes)) > 1 else [sizes[0]],
                             "layers": L, "groups": sorted(kinds)[0], "layout": sorted(layouts),
                             "memories": {str(m): g for m, g in got.items()},
                             "vllm_bytes_per_sequence": top["bytes_per_block"] * top["blocks_per_request"],
                             "planner_bytes_per_sequence": b, "below_two_blocks_refused": refused, "ok": ok})
    return kept


def _ssu_rows(rows: list, kv) -> None:
    """The per-layer group against the tree's initialize_mamba_ssu_backend, stock then with the project's patch."""
    import ast

    import vllm
    from vllm.config.mamba import MambaConfig
    from vllm.model_executor.layers.mamba.ops import ssu_dispatch

    from ghost_vllm_patches import PatchError, apply_patch
    from ghost_vllm_patches.ssu_backend_uniform_type import IMPORTERS, PATCH

    def backend_after(init) -> str:
        ssu_dispatch._mamba_ssu_backend = None
        init(MambaConfig(), kv)
        try:
            return ssu_dispatch.get_mamba_ssu_backend().name
        except RuntimeError as e:
            return f"RuntimeError: {str(e).splitlines()[0]}"

    stock = backend_after(ssu_dispatch.initialize_mamba_ssu_backend)
    try:
        apply_patch(PATCH)
        gate = "applied"
    except PatchError as e:
        gate = f"PatchError: {e}"
    PATCH.install()
    patched = backend_after(ssu_dispatch.initialize_mamba_ssu_backend)
    importers = {}
    for name in IMPORTERS:  # the model runners still import the function by name (the patch rebinds it there)
        path = Path(vllm.__file__).parent.joinpath(*name.split(".")[1:]).with_suffix(".py")
        tree = ast.parse(path.read_text())
        importers[name] = any(isinstance(n, ast.ImportFrom) and n.module == PATCH.target.split(":")[0]
                              and any(a.name == "initialize_mamba_ssu_backend" for a in n.names)
                              for n in ast.walk(tree))
    rows.append({"check": "ssu-patch", "group": type(kv.kv_cache_groups[0].kv_cache_spec).__name__,
                 "stock": stock, "patched": patched, "apply_patch_version_gate": gate,
                 "runners_import_by_name": importers,
                 "ok": stock.startswith("RuntimeError") and not patched.startswith("RuntimeError")
                 and all(importers.values())})


def _hybrid_rows(rows: list) -> None:
    import math
    import types
    from dataclasses import replace

    import torch
    from vllm.config import CacheConfig
    from vllm.model_executor.layers.mamba import abstract
    from vllm.model_executor.layers.mamba.mamba_mixer2 import MambaMixer2
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.platforms import cpu as cpu_platform
    from vllm.platforms.interface import Platform
    from vllm.transformers_utils.model_arch_config_convertor import (MODEL_ARCH_CONFIG_CONVERTORS,
                                                                      ModelArchConfigConvertorBase)
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
    from vllm.v1.attention.backends.mamba2_attn import Mamba2AttentionBackend
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

    import tests.test_hybrid_arith as T
    from ghost_vllm.planner.hybrid import hybrid_layout

    kv_cache_planning = _planning()

    # 0.33's _align_hybrid_block_size asks the model's Mamba layers for a prefill-checkpoint alignment (align mode);
    # the stand-in config has no forward context, so answer as every mixer of these models does: MambaMixer2 keeps
    # MambaBase's method (None → the alignment stays the kernel block).
    if hasattr(abstract, "get_mamba_prefill_checkpoint_alignment"):
        assert MambaMixer2.get_prefill_checkpoint_alignment is abstract.MambaBase.get_prefill_checkpoint_alignment
        abstract.get_mamba_prefill_checkpoint_alignment = lambda vllm_config: (
            MambaMixer2.get_prefill_checkpoint_alignment(None))

    def only(backend):
        return classmethod(lambda cls, vllm_config: [backend])

    platforms = {"cuda": type("Cuda", (Platform,), {"_find_non_ssm_backends": only(FlashAttentionBackend)}),
                 "cpu": type("Cpu", (cpu_platform.CpuPlatform,), {"_find_non_ssm_backends": only(CPUAttentionBackend)})}
    attention = {"cuda": FlashAttentionBackend, "cpu": CPUAttentionBackend}
    for platform in ("cuda", "cpu"):
        for name in T.CASES:
            cfg = T._cfg(name)
            for n in T._state_sizes(cfg):
                for mode in ("none", "align"):
                    v = types.SimpleNamespace(
                        torch=torch, CacheConfig=lambda mode=mode: CacheConfig(mamba_cache_mode=mode),
                        registry=ModelRegistry,
                        config_map=MODELS_CONFIG_MAP, cpu_mamba_backend=cpu_platform._cpu_mamba_backend,
                        platforms=platforms,
                        convertor=lambda hf: MODEL_ARCH_CONFIG_CONVERTORS.get(hf.model_type,
                                                                              ModelArchConfigConvertorBase)(hf, hf),
                        kv=kv_cache_planning, BlockPool=BlockPool, FullAttentionSpec=FullAttentionSpec,
                        MambaSpec=MambaSpec)
                    vc = T._engine_config(v, cfg, n, platform)
                    cache = vc.cache_config
                    ours = hybrid_layout(cfg, state_size=n, platform=platform, mamba_cache_mode=mode)
                    specs = T._vllm_specs(v, vc, cfg, mode)  # the test's specs: MambaSpec as MambaBase makes it
                    mixer = {k: replace(s, num_prefill_checkpoint_blocks=1, prefill_checkpoint_alignment=1)
                             if isinstance(s, MambaSpec) else s for k, s in specs.items()}  # + MambaMixer2's fields
                    evc = _engine_vc(cache, 4096, 1)
                    backends = [attention[platform], Mamba2AttentionBackend]
                    _resolve_layout(evc, mixer, backends)
                    per_req = {}
                    for label, sp in (("test_specs", specs), ("mixer_specs", mixer)):
                        gs = kv_cache_planning.get_kv_cache_groups(evc, dict(sp))
                        per_req[label] = {}
                        for ctx in (1, ours.block_size + 1, 4096, 131072):
                            evc.model_config.max_model_len = ctx
                            per_req[label][str(ctx)] = sum(
                                math.ceil(g.kv_cache_spec.max_memory_usage_bytes(evc) / g.kv_cache_spec.page_size_bytes)
                                for g in gs)
                    # num_blocks at max_model_len 1 (one block per attention group), so small pools start up too
                    evc.model_config.max_model_len = evc.model_config.original_max_model_len = 1
                    b, need = ours.bytes_per_block, per_req["mixer_specs"]["1"] + 1  # + the null block
                    got = {}
                    for memory in (need * b, 7 * need * b - 1, 7 * need * b, 80 * GiB):
                        layout, groups, kv = _plan(evc, mixer, memory, backends)
                        got[memory] = (kv.num_blocks, ours.num_blocks(memory))
                    mamba_groups = sum(isinstance(g.kv_cache_spec, MambaSpec) for g in groups)
                    ours_req = {str(c): ours.blocks_per_sequence(c) for c in (1, ours.block_size + 1, 4096, 131072)}
                    ok_layout = (ours.block_size == cache.block_size and
                                 ours.page_bytes == (cache.mamba_page_size_padded or ours.mamba_page_bytes) and
                                 (len(groups) - mamba_groups, mamba_groups) == (ours.attention_groups,
                                                                                ours.mamba_groups))
                    rows.append({"check": "hybrid", "model": name, "platform": platform, "state_size": n,
                                 "mamba_cache_mode": mode, "layout": layout,
                                 "block_size": {"vllm": cache.block_size, "planner": ours.block_size},
                                 "mamba_page_size_padded": cache.mamba_page_size_padded,
                                 "groups": {"vllm": [len(groups) - mamba_groups, mamba_groups],
                                            "planner": [ours.attention_groups, ours.mamba_groups]},
                                 "num_blocks": {str(m): {"vllm": a, "planner": e} for m, (a, e) in got.items()},
                                 "blocks_per_request": {"planner": ours_req, **per_req},
                                 "ok_layout_and_blocks": ok_layout and all(a == e for a, e in got.values()),
                                 "ok_per_request_test_specs": per_req["test_specs"] == ours_req,
                                 "ok_per_request_mixer_specs": per_req["mixer_specs"] == ours_req})


def child(tree: Path, out: Path) -> None:
    import inspect
    import logging

    logging.disable(logging.WARNING)
    sys.path.insert(1, str(ROOT))  # tests/ (helpers reused); PYTHONPATH (the tree) stays first
    import torch
    import vllm

    from ghost_vllm_patches import PATCHES, source_sha256

    here = Path(vllm.__file__).resolve().parent
    assert here == (tree / "vllm").resolve(), f"imported vllm from {here}, not from {tree}"
    import ghost_vllm.plugin.spec as spec_mod

    info = {"vllm_version": vllm.__version__, "vllm_file": vllm.__file__, "torch": torch.__version__,
            "python": sys.version.split()[0],
            "platform": type(__import__("vllm.platforms", fromlist=["current_platform"]).current_platform).__name__,
            "GhostMambaSpec_base": inspect.getsourcefile(spec_mod.MambaSpec),
            "modules_sha256": {m: hashlib.sha256((here / m).read_bytes()).hexdigest()
                               for m in MODULES if (here / m).is_file()}}
    rows: list = []
    base = str(info["vllm_version"]).split("+")[0]
    for patch in PATCHES.values():
        found = source_sha256(patch.target)
        declared = patch.target_sha256.get(base) or next(iter(patch.target_sha256.values()))
        rows.append({"check": "patch-hash", "patch": patch.name, "target": patch.target, "sha256": found,
                     "declared_sha256": declared, "declared_versions": list(patch.vllm_versions),
                     "same_source": found == declared, "ok": True})
    kept = _mamba2_rows(rows)
    _hybrid_rows(rows)
    _ssu_rows(rows, kept["ghost_kv"])  # last: it installs the patch in this process
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=1, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# parent: run the child with PYTHONPATH=<tree>, write JSON + Markdown
# ---------------------------------------------------------------------------------------------------------------------

def _markdown(res: dict, cmd: str) -> str:
    info, rows = res["info"], res["rows"]
    lines = [f"# vLLM {info['vllm_version']} cache planning vs ghost_vllm's planner (no GPU)", "",
             f"Run: `{cmd}`, which runs `{info['command']}`: vLLM {info['vllm_version']}'s pure-Python modules from "
             f"`{info['vllm_file']}` (platform {info['platform']}, torch {info['torch']}, Python {info['python']}; "
             "sha256 of the modules used in results.json); `GhostMambaSpec` "
             f"subclasses `MambaSpec` from `{info['GhostMambaSpec_base']}`. Generated by "
             "`benchmarks/vllm033_check.py`; numbers come from results.json.", "",
             "## Patch targets", "", "| patch | target | sha256 in this tree | declared (for " +
             ", ".join(rows[0]["declared_versions"]) + ") | same source |", "|---|---|---|---|---|"]
    for r in rows:
        if r["check"] == "patch-hash":
            lines.append(f"| {r['patch']} | `{r['target']}` | `{r['sha256'][:16]}…` | "
                         f"`{r['declared_sha256'][:16]}…` | {'yes' if r['same_source'] else 'no'} |")
    lines += ["", "## Pure Mamba2: engine-core planning (get_global_kv_cache_groups → get_kv_cache_configs) vs "
              "planner.arith (80 GiB of cache per worker)", "",
              "| model | variant | TP | dtype / SSM | groups | layout | bytes/block vLLM | planner | blocks/request "
              "vLLM | num_blocks vLLM | planner | sequences vLLM | planner | bytes/sequence vLLM = planner | "
              "< 2 blocks refused | ok |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["check"] == "mamba2":
            g = r["memories"][str(80 * GiB)]
            refused = "—" if r["variant"] == "per-layer stock" else "yes" if r["below_two_blocks_refused"] else "NO"
            v, p = g["vllm"], g["planner"]
            kinds = sorted(set(r["groups"]))
            groups = f"{len(r['groups'])} × {kinds[0]}" if len(kinds) == 1 else ", ".join(r["groups"])
            lines.append(f"| {r['model']} | {r['variant']} | {r['tp']} | {r['dtype']} / {r['ssm_dtype']} | {groups} | "
                         f"{'/'.join(r['layout'])} | {v['bytes_per_block']:,} | {p['bytes_per_block']:,} | "
                         f"{v['blocks_per_request']} | {v['num_blocks']:,} | {p['num_blocks']:,} | "
                         f"{v['sequences']:,} | {p['sequences']:,} | "
                         f"{'yes' if r['vllm_bytes_per_sequence'] == r['planner_bytes_per_sequence'] else 'NO'} | "
                         f"{refused} | {'✓' if r['ok'] else '✗'} |")
    stock = [r for r in rows if r["check"] == "mamba2" and r["variant"] == "per-layer stock"]
    if stock:
        lines += ["", "Per-layer stock (no GhostMambaSpec): vLLM pads every page to the largest "
                  "(`unify_kv_cache_spec_page_size`); the padded specs still differ (shapes), so "
                  "`_get_kv_cache_groups_uniform_page_size` makes one bucket per distinct N' and splits the buckets "
                  "into groups of the smallest bucket's size: a block is (layers per group) padded pages and a request "
                  "holds one block per group. Bytes per sequence equal the planner's `--stock-padding` figure "
                  "(L × max page) here (buckets that do not divide evenly would add padding layers); the block count "
                  "differs by the number of groups, the sequence count by the null block (one group's block instead "
                  "of L pages)."]
    for r in rows:
        if r["check"] == "ssu-patch":
            lines += ["", "## State-update backend with a per-layer group", "",
                      f"- group kind: `{r['group']}`", f"- stock `initialize_mamba_ssu_backend`: {r['stock']}",
                      f"- after `ssu_backend_uniform_type.install()`: backend `{r['patched']}`",
                      f"- `apply_patch` version gate: {r['apply_patch_version_gate']}",
                      f"- runners importing the function by name: {r['runners_import_by_name']}",
                      f"- ok: {'✓' if r['ok'] else '✗'}"]
    hy = [r for r in rows if r["check"] == "hybrid"]
    lines += ["", "## Hybrids: block size, padding, groups, num_blocks (engine-core planning) and blocks per request",
              "", "Per-request blocks: vLLM's `max_memory_usage_bytes` per group (what admission and "
              "`get_max_concurrency_for_kv_cache_config` count), with the test's MambaSpec (no prefill-checkpoint "
              "block) and with the spec `MambaMixer2.get_kv_cache_spec` really returns "
              "(`num_prefill_checkpoint_blocks=1`).", "",
              "| model | platform | N | mode | block vLLM | planner | groups A/M | num_blocks 80 GiB vLLM | planner | "
              "req blocks @4096 planner | test spec | mixer spec | layout+blocks ok | req ok (test / mixer) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in hy:
        nb = r["num_blocks"][str(80 * GiB)]
        br = r["blocks_per_request"]
        lines.append(f"| {r['model']} | {r['platform']} | {r['state_size']} | {r['mamba_cache_mode']} | "
                     f"{r['block_size']['vllm']} | {r['block_size']['planner']} | "
                     f"{'/'.join(map(str, r['groups']['vllm']))} | {nb['vllm']:,} | {nb['planner']:,} | "
                     f"{br['planner']['4096']} | {br['test_specs']['4096']} | {br['mixer_specs']['4096']} | "
                     f"{'✓' if r['ok_layout_and_blocks'] else '✗'} | "
                     f"{'✓' if r['ok_per_request_test_specs'] else '✗'} / "
                     f"{'✓' if r['ok_per_request_mixer_specs'] else '✗'} |")
    bad_mixer = [r for r in hy if not r["ok_per_request_mixer_specs"]]
    lines += ["", f"{sum(r['ok_layout_and_blocks'] for r in hy)}/{len(hy)} hybrid rows agree on block size, padding, "
              f"groups and num_blocks; per-request blocks agree for {sum(r['ok_per_request_test_specs'] for r in hy)}"
              f"/{len(hy)} with the test's specs and {len(hy) - len(bad_mixer)}/{len(hy)} with the mixer's specs"
              + (f" (the others are all mamba_cache_mode "
                 f"{sorted({r['mamba_cache_mode'] for r in bad_mixer})}: MambaSpec.max_memory_usage_bytes budgets "
                 "2 + num_speculative_blocks + num_prefill_checkpoint_blocks pages per Mamba group in align mode, "
                 "i.e. 3 for MambaMixer2, where the planner counts 2)." if bad_mixer else ".")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", required=True, type=Path, help="directory holding an unzipped vllm/ Python tree")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: write raw results here
    args = ap.parse_args(argv)
    tree = args.tree.resolve()
    if args.child is not None:
        child(tree, args.child)
        return 0
    if not (tree / "vllm" / "__init__.py").is_file():
        ap.error(f"--tree {tree}: no vllm/__init__.py there (unzip the wheel's vllm/*.py into it)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--tree", str(tree), "--child", str(raw)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not raw.is_file():
            sys.stderr.write(proc.stderr[-6000:])
            return proc.returncode or 1
        res = json.loads(raw.read_text())
    res["info"]["command"] = f"PYTHONPATH={tree} {sys.executable} benchmarks/vllm033_check.py --tree {tree} --child RAW"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    shown = f"python benchmarks/vllm033_check.py --tree {tree}"
    (args.out / "results.md").write_text(_markdown(res, shown))
    rows = res["rows"]
    failed = [r for r in rows if r["check"] in ("mamba2", "ssu-patch") and not r["ok"]] + [
        r for r in rows
        if r["check"] == "hybrid" and not (r["ok_layout_and_blocks"] and r["ok_per_request_test_specs"])]
    print(f"vLLM {res['info']['vllm_version']}: {len(rows)} rows, {len(failed)} failed → {args.out}/results.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
