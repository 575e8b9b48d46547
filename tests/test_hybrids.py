"""Hybrid families (Nemotron-H, Granite-4.0-H, Falcon-H1, Zamba2) through the family-agnostic pipeline: tiny
random models with each family's real layer pattern (attention among Mamba2 layers; Nemotron-H and Falcon-H1 with
n_groups 2), pruned by the CLI, checked against the dense model with the removed B/C channels zeroed, and our scan's
statistics input checked against transformers' own recurrent state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vllm.families import family_for_config
from tests.helpers.tiny_hybrids import TINY_FAMILIES, save_tiny_hybrid, tiny_hybrid_model
from ghost_vllm.mamba.reference import mixer_ssm_inputs, ssm_scan
from ghost_vllm.stats.capture import capture_block_inputs, mixer_input, run_block
from ghost_vllm.surgery import zero_channels

FAMILIES = list(TINY_FAMILIES)
HF_CLASSES = {"nemotron_h": "NemotronHForCausalLM", "granitemoehybrid": "GraniteMoeHybridForCausalLM",
              "falcon_h1": "FalconH1ForCausalLM", "zamba2": "Zamba2ForCausalLM"}


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ghost_vllm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Per family: (dense dir, pruned dir) — the pruned one written by `ghost-vllm prune` at κ = 0.5."""
    root = tmp_path_factory.mktemp("hybrids")
    out = {}
    for mt in FAMILIES:
        dense, ghost = root / mt, root / f"{mt}-ghost50"
        save_tiny_hybrid(dense, mt, seed=3)
        r = _cli("prune", "--model", str(dense), "--sparsity", "0.5", "--nsamples", "8", "--seq-len", "64",
                 "--out", str(ghost), "--no-progress", "--no-refit")  # truncation only: = the zeroed dense model
        assert r.returncode == 0, r.stderr[-2000:]
        out[mt] = (dense, ghost)
    return out


@pytest.mark.parametrize("model_type", FAMILIES)
def test_cli_pruned_equals_dense_with_removed_channels_zeroed(pruned, model_type):
    import transformers

    dense_dir, ghost_dir = pruned[model_type]
    cls = getattr(transformers, HF_CLASSES[model_type])  # the family's plain transformers class
    ghost = cls.from_pretrained(str(ghost_dir), dtype=torch.float32).eval()
    dense = cls.from_pretrained(str(dense_dir), dtype=torch.float32).eval()
    cfg = json.loads((ghost_dir / "config.json").read_text())
    info = json.loads((ghost_dir / "ghost.json").read_text())
    family = family_for_config(cfg)
    assert cfg["architectures"] == [family.ghost_architecture] and cfg["model_type"] == model_type
    assert family.state_size(cfg) == 8 and info["state_size_original"] == 16 and info["family"] == model_type
    layout = family.layout(dense.config)
    blocks = family.blocks(dense)
    assert [layer["layer"] for layer in info["layers"]] == family.mamba_layers(cfg) == [
        i for i, b in enumerate(blocks) if family.mixer(b) is not None]
    for layer in info["layers"]:
        keep = torch.tensor(layer["kept"])
        assert keep.shape == (layout.n_groups, 8)
        removed = torch.stack([torch.tensor(sorted(set(range(16)) - set(k.tolist()))) for k in keep])
        zero_channels(family.mixer(blocks[layer["layer"]]), layout, removed)
    x = torch.randint(2, 300, (2, 45), generator=torch.Generator().manual_seed(7))  # 6 chunks of 8
    with torch.no_grad():
        a, b = ghost(x).logits, dense(x).logits
        unmasked = cls.from_pretrained(str(dense_dir), dtype=torch.float32).eval()(x).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (unmasked - b).abs().max() > 1e-3  # the zeroed channels mattered: the check can fail


@pytest.mark.parametrize("model_type", FAMILIES)
def test_scan_inputs_reproduce_transformers_recurrent_state(model_type):
    """What the statistics see (the block's mixer input, the family's multipliers, our sequential scan) ends in the
    same SSM state as transformers' own forward stores in its cache, for every Mamba layer."""
    model = tiny_hybrid_model(model_type, seed=5)
    family = family_for_config(model.config)
    layout = family.layout(model.config)
    x = torch.randint(2, 300, (1, 37), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model(x, use_cache=True).past_key_values
        blocks = family.blocks(model)
        acts, calls = capture_block_inputs(model, blocks, [x])
        h, checked = acts[0], 0
        for i, block in enumerate(blocks):
            mixer = family.mixer(block)
            if mixer is not None:
                u = mixer_input(block, mixer, h, calls[i][0])
                s = mixer_ssm_inputs(mixer, layout, u * family.input_scale(mixer), family.in_proj_scale(mixer))
                _, state = ssm_scan(s.x, s.dt, s.A, s.B, s.C, s.D)
                theirs = cache.layers[i].recurrent_states[0].float()  # [b, H, P, N]
                torch.testing.assert_close(state, theirs.reshape(state.shape), rtol=2e-4, atol=2e-5)
                assert theirs.abs().max() > 1e-3
                checked += 1
            h = run_block(block, h, calls[i][0])
    assert checked == len(family.mamba_layers(model.config))


def test_hybrid_inspect_and_state_bytes(pruned):
    dense_dir, ghost_dir = pruned["nemotron_h"]
    r = _cli("inspect", str(ghost_dir))
    assert r.returncode == 0, r.stderr
    assert "6 (3 with a Mamba2 mixer)" in r.stdout and "16 → 8" in r.stdout and "with attention" in r.stdout
    from ghost_vllm.inspection import inspect_checkpoint
    from ghost_vllm.planner.hybrid import hybrid_bytes

    rows = inspect_checkpoint(ghost_dir)["hybrid"]
    cfg = json.loads((ghost_dir / "config.json").read_text())
    assert [r["context"] for r in rows] == [4096, 32768, 131072]
    for r in rows:  # the pruned checkpoint against the dense config, both through vLLM's rules
        mine = hybrid_bytes(cfg, r["context"], dtype="float32")
        dense = hybrid_bytes(json.loads((dense_dir / "config.json").read_text()), r["context"], dtype="float32")
        assert (r["bytes"], r["bytes_original"]) == (mine.vllm_bytes, dense.vllm_bytes)
        assert r["attention_bytes"] + r["mamba_bytes"] == r["bytes"]
    # exact arithmetic: per Mamba layer conv (K-1)(I+2GN) + SSM H·P·N, fp32; I = 128, G = 2, H·P = 128
    per_layer = lambda n: 4 * (3 * (128 + 2 * 2 * n) + 128 * n)  # noqa: E731
    info = json.loads((ghost_dir / "ghost.json").read_text())
    assert info["state_bytes_per_sequence"] == 3 * per_layer(8)
    assert info["state_bytes_per_sequence_original"] == 3 * per_layer(16)


def test_compare_prices_a_hybrid_sequence_with_its_attention_kv(pruned):
    """`compare` (and `slots`) print one bytes-per-sequence figure: for a hybrid the Mamba state plus the attention KV
    at a stated context (vLLM's rules), not the Mamba state alone — the ratio a user reads is the sequences ratio."""
    from ghost_vllm.commands.compare import format_comparison
    from ghost_vllm.inspection import inspect_checkpoint, sequence_bytes
    from ghost_vllm.planner.hybrid import hybrid_bytes

    dense_dir, ghost_dir = pruned["nemotron_h"]
    dense, ghost = inspect_checkpoint(dense_dir), inspect_checkpoint(ghost_dir)
    mine = hybrid_bytes(json.loads((ghost_dir / "config.json").read_text()), 4096, dtype="float32").vllm_bytes
    orig = hybrid_bytes(json.loads((dense_dir / "config.json").read_text()), 4096, dtype="float32").vllm_bytes
    assert sequence_bytes(ghost) == (mine, orig, "Mamba state + attention KV at 4,096 tokens")
    assert mine > ghost["bytes_per_sequence"]  # the attention KV is part of it
    table = format_comparison([{"model": "dense", "inspect": dense, "perplexity": []},
                               {"model": "ghost", "inspect": ghost, "perplexity": []}])
    assert f"| ghost | 8 | {mine:,} | {orig / mine:.3f}× |" in table
    assert "Mamba state + attention KV at 4,096 tokens" in table
    assert "smaller Mamba state" in _cli("inspect", str(ghost_dir)).stdout


def test_unsupported_architectures_are_one_line_naming_the_families(tmp_path):
    cases = {"llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
             "jamba": {"model_type": "jamba", "architectures": ["JambaForCausalLM"]},
             "mamba1": {"model_type": "mamba", "architectures": ["MambaForCausalLM"]}}
    for name, cfg in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        r = _cli("prune", "--model", str(d), "--out", str(tmp_path / f"{name}-out"))
        assert r.returncode == 2, (name, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert f"model_type is {cfg['model_type']!r}" in lines[0] and cfg["architectures"][0] in lines[0]
        for family in ("Mamba2ForCausalLM", "NemotronHForCausalLM", "GraniteMoeHybridForCausalLM",
                       "FalconH1ForCausalLM", "Zamba2ForCausalLM"):
            assert family in lines[0]
        assert not (tmp_path / f"{name}-out").exists()


def test_what_hybrids_lack_is_refused_before_loading(pruned, tmp_path):
    dense_dir, _ = pruned["zamba2"]
    base = ["prune", "--model", str(dense_dir), "--nsamples", "4", "--seq-len", "16"]
    cases = [(["--allocation", "adaptive"], "per-layer state budgets are served for pure Mamba2 only"),
             (["--method", "taylor"], "selection.method: taylor needs our differentiable Mamba2 forward")]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"o{i}"
        r = _cli(*base, *extra, "--out", str(out))
        assert r.returncode == 2 and message in r.stderr and "Zamba2ForCausalLM" in r.stderr, r.stderr
        assert not out.exists()


def _depth_residuals(model, x) -> dict[int, torch.Tensor]:
    """Per Mamba layer of ``model`` on tokens ``x``: the residual stream right after the mixer's output was added
    (the block output, or the input of the family's refit_residual module), by running the model's own blocks."""
    family = family_for_config(model.config)
    blocks = family.blocks(model)
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        acts, calls = capture_block_inputs(model, blocks, [x])
        h = acts[0]
        for i, block in enumerate(blocks):
            seen: list[torch.Tensor] = []
            mid = family.refit_residual(block) if family.mixer(block) is not None else None
            handle = mid.register_forward_pre_hook(lambda _m, a: seen.append(a[0])) if mid is not None else None
            nxt = run_block(block, h, calls[i][0])
            if handle is not None:
                handle.remove()
            if family.mixer(block) is not None:
                out[i] = (seen[0] if seen else nxt).double()
            h = nxt
    return out


@pytest.mark.parametrize("model_type", FAMILIES)
def test_refit_lowers_every_hybrid_mamba_layers_error_at_its_depth(model_type):
    """The readout refit on a hybrid: at every Mamba layer, measured by running the blocks (not from the solver's
    statistics), the pruned network's residual stream right after the mixer is closer to the dense network's than
    with the same layer's dense out_proj (un-refit), and the report's before/after ratio is that measured ratio."""
    import copy

    import ghost_vllm
    from ghost_vllm.recipe import SelectionSpec

    dense = tiny_hybrid_model(model_type, seed=4)
    family = family_for_config(dense.config)
    x = torch.randint(2, 300, (8, 40), generator=torch.Generator().manual_seed(6))
    model = copy.deepcopy(dense)
    report = ghost_vllm.prune(model, x, SelectionSpec(sparsity=0.5, refit=True), batch_size=4, progress=False).report
    layers = family.mamba_layers(dense.config)
    assert [r.layer for r in report.refit] == layers
    goal = _depth_residuals(dense, x)
    got = _depth_residuals(model, x)
    for r in report.refit:
        unrefit = copy.deepcopy(model)  # the same network, this one layer's out_proj back to the dense weights
        family.mixer(family.blocks(unrefit)[r.layer]).out_proj.weight.data.copy_(
            family.mixer(family.blocks(dense)[r.layer]).out_proj.weight)
        e_refit = float((got[r.layer] - goal[r.layer]).pow(2).sum())
        e_unrefit = float((_depth_residuals(unrefit, x)[r.layer] - goal[r.layer]).pow(2).sum())
        assert e_refit < e_unrefit, (model_type, r.layer, e_refit, e_unrefit)
        assert r.error_after / r.error_before == pytest.approx(e_refit / e_unrefit, rel=1e-3)


@pytest.mark.parametrize("family", ["mamba2", "nemotron_h"])
def test_training_resume_reloads_the_saved_weights(tmp_path, family):
    """A resumed training run continues from the checkpoint's weights (Nemotron-H saves ``backbone.*`` names that
    a plain ``load_state_dict`` would silently skip)."""
    from ghost_vllm.reference.train import _save, build_model, load_checkpoint_model
    from ghost_vllm.reference.train_config import ModelShape, TrainConfig

    shape = ModelShape(family=family, hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16, n_groups=2,
                       layers="M*M-", attention_head_dim=32, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=96)
    model = build_model(TrainConfig(source="-", model=shape), 128)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)  # not what a fresh build would give
    _save(model, None, {"step": 1}, tmp_path / "ckpt")
    again = load_checkpoint_model(tmp_path / "ckpt")
    theirs = dict(again.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(theirs[name], p, rtol=0, atol=0)


def test_plugin_maps_each_ghost_hybrid_to_its_family_config_and_prices_it(pruned):
    """register(): every ghost architecture in vLLM's registry and config map; Nemotron-H's keeps the family's own
    update (float32 SSM state by default — without it the state would follow the model dtype); the metrics price a
    hybrid's Mamba state as ``ghost-vllm inspect`` does."""
    from types import SimpleNamespace

    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, NemotronHForCausalLMConfig

    from ghost_vllm.inspection import inspect_checkpoint
    from ghost_vllm.plugin import ARCHITECTURES, register
    from ghost_vllm.plugin.metrics import state_bytes

    register()
    register()  # idempotent
    for arch in ARCHITECTURES:
        assert arch in ModelRegistry.get_supported_archs() and arch in MODELS_CONFIG_MAP
    nemotron = MODELS_CONFIG_MAP["GhostNemotronHForCausalLM"]
    assert issubclass(nemotron, NemotronHForCausalLMConfig)
    cache = SimpleNamespace(mamba_ssm_cache_dtype="auto")
    nemotron.update_mamba_ssm_cache_dtype(cache_config=cache, hf_config=SimpleNamespace())
    assert cache.mamba_ssm_cache_dtype == "float32"
    for mt, (_, ghost_dir) in pruned.items():
        hf = AutoConfig.from_pretrained(str(ghost_dir))
        assert state_bytes(hf, None, "float32", "float32") == inspect_checkpoint(ghost_dir)["bytes_per_sequence"]
        assert state_bytes(hf, 16, "float32", "float32") == inspect_checkpoint(ghost_dir)["bytes_per_sequence_original"]
