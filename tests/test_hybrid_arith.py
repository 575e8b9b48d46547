"""ghost_vllm.planner.hybrid equals vLLM 0.32's own cache arithmetic for hybrid models, exactly, in-process (no engine):
the four tiny hybrid families and every released config in ghost_vllm/families/configs, at the config's d_state and
at half of it, on the CUDA and the CPU rules. vLLM's functions are called on stand-in config objects that carry only
what they read: the model classes' ``get_mamba_state_shape_from_config`` / ``_dtype_from_config`` (MambaSpec page),
``FullAttentionSpec`` with the model config's head size and KV heads (vLLM's arch-config convertor), the model config
hook (``MODELS_CONFIG_MAP``: Nemotron-H's SSM dtype), ``_cpu_mamba_backend`` (CPU's SSM-dtype reset),
``update_block_size_for_backend`` (block size, Mamba padding; only the lookup of the model's attention layers is
replaced), ``get_kv_cache_groups`` → ``get_kv_cache_config_from_groups`` (groups, num_blocks),
``max_memory_usage_bytes`` per group (blocks per request) and ``BlockPool`` (the null block)."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import pytest

from ghost_vllm.errors import ModelError, RecipeError
from ghost_vllm.families import family_for_config
from tests.helpers.tiny_hybrids import TINY_FAMILIES, tiny_hybrid_config
from ghost_vllm.planner.hybrid import hybrid_bytes, hybrid_layout, sequences_in, ssm_cache_dtype

CONFIG_DIR = Path(__file__).resolve().parents[1] / "ghost_vllm" / "families" / "configs"
RELEASED = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
MIXES = {"mix-2x3": "MAMAM", "mix-4x5": "MAMAMAMAM", "mix-3x7": "MMAMMAMMAM"}  # A attention x M Mamba layers
CASES = [f"tiny-{mt}" for mt in TINY_FAMILIES] + list(MIXES) + RELEASED
GiB = 2**30


def _cfg(name: str) -> dict:
    if name.startswith("tiny-"):
        return tiny_hybrid_config(name[5:]).to_dict()
    if name in MIXES:  # tiny Granite with other attention:Mamba ratios (vLLM's group size switches at 1.5)
        kinds = [{"M": "mamba", "A": "attention"}[c] for c in MIXES[name]]
        tiny = tiny_hybrid_config("granitemoehybrid").to_dict()
        return tiny | {"layer_types": kinds, "num_hidden_layers": len(kinds)}
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def _state_sizes(cfg: dict) -> list[int]:
    n = family_for_config(cfg).layout(cfg).state_size
    return [n, n // 2]


# hand-checked ------------------------------------------------------------------------------------------------------
def test_nemotron_h_8b_by_hand():
    """Nemotron-H 8B, CUDA: conv 3·(8192 + 2·8·128)·2 B, SSM 128·64·128·4 B (float32 by default) → Mamba page
    4,255,744 B; a token of one attention layer 2·8·128·2 = 4096 B → block 16·ceil(4,255,744 / (16·4096)) = 1040;
    4 attention + 24 Mamba layers → groups of 4: 1 attention group, 6 Mamba groups; 4k tokens: 4 + 6 blocks."""
    hb = hybrid_bytes(_cfg("nemotron-h-8b"), 4096)
    lay = hb.layout
    assert (lay.conv_bytes, lay.ssm_bytes, lay.ssm_dtype) == (61_440, 4_194_304, "float32")
    assert (lay.token_bytes, lay.block_size, lay.page_bytes) == (4096, 1040, 4_259_840)
    assert (lay.attention_groups, lay.mamba_groups, lay.bytes_per_block) == (1, 6, 17_039_360)
    assert (hb.blocks, hb.vllm_bytes, hb.dominant) == (10, 170_393_600, "mamba")
    assert hb.attention_bytes == 4 * 4 * 1040 * 4096 and hb.mamba_bytes == 24 * 4_255_744
    assert sequences_in(80 * GiB, hb) == (80 * GiB // 17_039_360 - 1) // 10 == 504
    half = hybrid_bytes(_cfg("nemotron-h-8b"), 4096, state_size=64).layout
    assert (half.block_size, half.bytes_per_block) == (528, 4 * 528 * 4096)  # 2,152,448 B of state → 33 pages of 16


def test_cpu_resets_ssm_dtype_unless_bf16_gdn():
    granite, falcon = _cfg("tiny-granitemoehybrid"), _cfg("tiny-falcon_h1")
    assert ssm_cache_dtype(granite, "bfloat16", "auto", "cuda") == "bfloat16"
    assert ssm_cache_dtype(granite, "bfloat16", "auto", "cpu") == "float32"
    assert ssm_cache_dtype(granite, "bfloat16", "bfloat16", "cpu") == "bfloat16"  # Mamba-only layers: gdn
    assert ssm_cache_dtype(falcon, "bfloat16", "bfloat16", "cpu") == "float32"  # parallel layers: no gdn
    assert ssm_cache_dtype(falcon, "bfloat16", "auto", "cpu-no-avx512bf16") == "bfloat16"


def test_refuses_what_it_does_not_mirror():
    mamba2 = {"model_type": "mamba2", "num_hidden_layers": 2}
    with pytest.raises(ModelError, match="not a hybrid; pure Mamba2 caches are planned by ghost_vllm.planner.arith"):
        hybrid_layout(mamba2)
    with pytest.raises(RecipeError, match="FlashAttention takes multiples of 16"):
        hybrid_layout(_cfg("tiny-nemotron_h"), block_size=24)
    with pytest.raises(RecipeError, match="platform 'tpu': use one of cuda, cpu"):
        hybrid_layout(_cfg("tiny-nemotron_h"), platform="tpu")
    with pytest.raises(RecipeError, match="state_size 300: must be between 1 and the config's 16"):
        hybrid_layout(_cfg("tiny-nemotron_h"), state_size=300)


# against vLLM ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm():
    """vLLM's functions and classes (one import for the module: ~5–15 s on a loaded 2-core host)."""
    import torch
    from vllm.config import CacheConfig
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.platforms import cpu as cpu_platform
    from vllm.platforms.interface import Platform
    from vllm.transformers_utils.model_arch_config_convertor import (MODEL_ARCH_CONFIG_CONVERTORS,
                                                                      ModelArchConfigConvertorBase)
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

    def only(backend):  # the model's attention layers are looked up in its forward context; we have no model
        return classmethod(lambda cls, vllm_config: [backend])

    # CudaPlatform overrides none of update_block_size_for_backend / _align_hybrid_block_size: Platform's run there
    platforms = {"cuda": type("Cuda", (Platform,), {"_find_non_ssm_backends": only(FlashAttentionBackend)}),
                 "cpu": type("Cpu", (cpu_platform.CpuPlatform,), {"_find_non_ssm_backends": only(CPUAttentionBackend)})}
    return types.SimpleNamespace(
        torch=torch, CacheConfig=CacheConfig, registry=ModelRegistry, config_map=MODELS_CONFIG_MAP,
        cpu_mamba_backend=cpu_platform._cpu_mamba_backend, platforms=platforms,
        convertor=lambda hf: MODEL_ARCH_CONFIG_CONVERTORS.get(hf.model_type, ModelArchConfigConvertorBase)(hf, hf),
        kv=kv_cache_utils, BlockPool=BlockPool, FullAttentionSpec=FullAttentionSpec, MambaSpec=MambaSpec)


def _hf(cfg: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})


def _engine_config(v, cfg: dict, state_size: int, platform: str, ssm_request: str = "auto"):
    """A stand-in VllmConfig after vLLM's start-up hooks (model hook, CPU SSM reset, block-size alignment)."""
    family = family_for_config(cfg)
    hf = _hf(cfg)
    setattr(hf, family.state_key, state_size)
    conv = v.convertor(hf)
    arch = family.hf_architectures[0]
    cache = v.CacheConfig()  # block_size: DEFAULT_BLOCK_SIZE, not user-specified
    if platform == "cpu":
        cache.block_size = 128  # CpuPlatform.check_and_update_config, no --block-size
    cache.mamba_ssm_cache_dtype = ssm_request
    model = types.SimpleNamespace(
        dtype=v.torch.bfloat16, use_mla=False, architecture=arch, hf_config=hf, hf_text_config=hf, model_impl="auto",
        convert_type="none", runner_type="generate", is_hybrid=True, has_inner_state=True, registry=v.registry,
        get_head_size=conv.get_head_size,
        get_num_kv_heads=lambda parallel: max(1, conv.get_total_num_kv_heads() // parallel.tensor_parallel_size))
    vc = types.SimpleNamespace(model_config=model, cache_config=cache, num_speculative_tokens=0,
                               parallel_config=types.SimpleNamespace(tensor_parallel_size=1))
    if hook := v.config_map.get(arch):  # try_verify_and_update_config (before the platform's)
        hook.verify_and_update_config(vc)
    if platform == "cpu" and cache.mamba_ssm_cache_dtype != "float32":  # check_and_update_config, AVX512-BF16 host
        gdn = v.cpu_mamba_backend(vc) == "gdn"
        if not (cache.mamba_ssm_cache_dtype in ("float16", "bfloat16") and gdn):
            cache.mamba_ssm_cache_dtype = "float32"
    v.platforms[platform].update_block_size_for_backend(vc)
    return vc


def _vllm_specs(v, vc, cfg: dict, mode: str) -> dict:
    """Every layer's KV-cache spec, in layer order, as the model's layers would build them (TP 1)."""
    family = family_for_config(cfg)
    model_cls, _ = v.registry.resolve_model_cls(vc.model_config.architecture, model_config=vc.model_config)
    cache, model = vc.cache_config, vc.model_config
    mamba = v.MambaSpec(shapes=tuple(model_cls.get_mamba_state_shape_from_config(vc)),
                        dtypes=model_cls.get_mamba_state_dtype_from_config(vc),
                        block_size=cache.block_size if mode == "align" else 4096,  # else max_model_len
                        page_size_padded=cache.mamba_page_size_padded, mamba_cache_mode=mode,
                        # what MambaMixer2.get_kv_cache_spec returns (0.32 and 0.33): one prefill-checkpoint block
                        num_prefill_checkpoint_blocks=1, prefill_checkpoint_alignment=1)
    attention = v.FullAttentionSpec(block_size=cache.block_size, head_size=model.get_head_size(), dtype=model.dtype,
                                    num_kv_heads=model.get_num_kv_heads(vc.parallel_config))
    specs = {}
    attn, mix = set(family.attention_layers(cfg)), set(family.mamba_layers(cfg))
    for i in range(family.num_layers(cfg)):
        if i in attn:
            specs[f"layers.{i}.attn"] = attention
        if i in mix:
            specs[f"layers.{i}.mamba"] = mamba
    return specs


def _layer_kv(hf) -> tuple[int, int]:
    """(KV heads, head size) as each vLLM model's attention module builds its ``Attention`` (vLLM 0.32 sources)."""
    mt = hf.model_type
    if mt == "zamba2":  # Zamba2Attention: Attention(num_heads, attention_head_dim) — no num_kv_heads: MHA
        return hf.num_attention_heads, hf.attention_head_dim
    if mt == "granitemoehybrid":  # hidden_size // num_attention_heads
        return hf.num_key_value_heads, hf.hidden_size // hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None)  # Nemotron-H, Falcon-H1: head_dim, else hidden // heads
    return hf.num_key_value_heads, head_dim if head_dim is not None else hf.hidden_size // hf.num_attention_heads


@pytest.mark.parametrize("platform", ["cuda", "cpu"])
@pytest.mark.parametrize("name", CASES)
def test_layout_is_vllms(vllm, name, platform):
    cfg = _cfg(name)
    for n in _state_sizes(cfg):
        ours = hybrid_layout(cfg, state_size=n, platform=platform)
        vc = _engine_config(vllm, cfg, n, platform)
        cache, model = vc.cache_config, vc.model_config
        assert ours.ssm_dtype == (cache.mamba_ssm_cache_dtype if cache.mamba_ssm_cache_dtype != "auto" else "bfloat16")
        model_cls, _ = vllm.registry.resolve_model_cls(model.architecture, model_config=model)
        shapes = model_cls.get_mamba_state_shape_from_config(vc)
        dtypes = model_cls.get_mamba_state_dtype_from_config(vc)
        sizes = [math.prod(s) * d.itemsize for s, d in zip(shapes, dtypes)]
        assert (ours.conv_bytes, ours.ssm_bytes) == tuple(sizes), (name, n)
        assert ours.mamba_page_bytes == vllm.MambaSpec(shapes=shapes, dtypes=dtypes, block_size=-1).page_size_bytes
        token = vllm.FullAttentionSpec(block_size=1, num_kv_heads=model.get_num_kv_heads(vc.parallel_config),
                                       head_size=model.get_head_size(), dtype=model.dtype).page_size_bytes
        assert ours.token_bytes == token
        assert (ours.kv_heads, ours.head_size) == _layer_kv(model.hf_config)  # the layers' own specs match too
        assert ours.block_size == cache.block_size, (name, n)
        assert ours.page_bytes == (cache.mamba_page_size_padded or ours.mamba_page_bytes)


@pytest.mark.parametrize("platform", ["cuda", "cpu"])
@pytest.mark.parametrize("name", CASES)
def test_blocks_are_vllms(vllm, name, platform):
    cfg = _cfg(name)
    for n in _state_sizes(cfg):
        vc = _engine_config(vllm, cfg, n, platform)
        vc.cache_config.kv_cache_layout = "BLHNC"
        for mode in ("none", "align"):
            vc.cache_config.mamba_cache_mode = mode
            ours = hybrid_layout(cfg, state_size=n, platform=platform, mamba_cache_mode=mode)
            specs = _vllm_specs(vllm, vc, cfg, mode)
            run = types.SimpleNamespace(
                cache_config=vc.cache_config, speculative_config=None,
                scheduler_config=types.SimpleNamespace(disable_hybrid_kv_cache_manager=False),
                attention_config=types.SimpleNamespace(hisparse_config=None),
                parallel_config=types.SimpleNamespace(tensor_parallel_size=1, decode_context_parallel_size=1),
                model_config=types.SimpleNamespace(max_model_len=4096))
            groups = vllm.kv.get_kv_cache_groups(run, dict(specs))
            mamba_groups = sum(isinstance(g.kv_cache_spec, vllm.MambaSpec) for g in groups)
            assert (len(groups) - mamba_groups, mamba_groups) == (ours.attention_groups, ours.mamba_groups)
            b = ours.bytes_per_block
            for memory in (b, 7 * b - 1, 7 * b, 80 * GiB):
                kv = vllm.kv.get_kv_cache_config_from_groups(run, groups, memory)
                assert kv.num_blocks == ours.num_blocks(memory), (name, n, memory)
            for context in (1, ours.block_size, ours.block_size + 1, 4096, 32768, 131072):
                run.model_config.max_model_len = context
                blocks = sum(math.ceil(g.kv_cache_spec.max_memory_usage_bytes(run) / g.kv_cache_spec.page_size_bytes)
                             for g in groups)
                assert ours.blocks_per_sequence(context) == blocks, (name, n, mode, context)
                kv = vllm.kv.get_kv_cache_config_from_groups(run, groups, 80 * GiB)
                concurrency = vllm.kv.get_max_concurrency_for_kv_cache_config(run, kv)
                assert concurrency == kv.num_blocks / blocks


def test_null_block_and_sequences_in(vllm):
    """The pool hands out num_blocks - 1 blocks; sequences_in counts whole sequences in those."""
    pool = vllm.BlockPool(num_gpu_blocks=23, enable_caching=False, hash_block_size=16)
    assert pool.get_num_free_blocks() == 22
    hb = hybrid_bytes(_cfg("tiny-nemotron_h"), 100, platform="cpu")
    per = hb.blocks
    assert sequences_in(hb.layout.bytes_per_block * (2 * per + 1), hb) == 2
    assert sequences_in(hb.layout.bytes_per_block * (2 * per + 1) - 1, hb) == 1


@pytest.mark.parametrize("name", CASES)
def test_cpu_ssm_rule_is_vllms(vllm, name):
    cfg = _cfg(name)
    n = _state_sizes(cfg)[0]
    for request in ("auto", "bfloat16", "float16", "float32"):
        vc = _engine_config(vllm, cfg, n, "cpu", ssm_request=request)
        theirs = vc.cache_config.mamba_ssm_cache_dtype
        assert ssm_cache_dtype(cfg, "bfloat16", request, "cpu") == ("bfloat16" if theirs == "auto" else theirs)
