"""Reading model directories (once :mod:`ghost_vllm.sources` has resolved the name) (validated cheaply before any weight is loaded) and writing ghost checkpoints
atomically (temporary directory beside the target, renamed at the end) with ``ghost.json`` provenance."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ghost_vllm.errors import CheckpointError, ModelError, OutputError
from ghost_vllm.mamba.budgets import config_state_sizes
from ghost_vllm.sources import TOKENIZER_FILES, hub_snapshot, is_hub_id
from ghost_vllm.weights import safetensors_header

__all__ = [
    "GHOST_ARCHITECTURE",
    "GHOST_FILE",
    "resolve_tokenizer_path",
    "read_config",
    "weight_shapes",
    "check_safetensors_complete",
    "validate_model_dir",
    "source_hash",
    "load_model",
    "load_tokenizer",
    "write_checkpoint",
    "read_ghost_json",
    "clean_stale_temporaries",
    "apply_umask",
    "check_output_location",
]

log = logging.getLogger(__name__)

GHOST_ARCHITECTURE = "GhostMamba2ForCausalLM"
GHOST_FILE = "ghost.json"


def read_config(model_dir: Path) -> dict[str, Any]:
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found; pass a Hugging Face-format Mamba2 directory with --model")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{model_dir}: no config.json; a Hugging Face-format Mamba2 directory has config.json + *.safetensors")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{cfg_path}: not valid JSON ({e}); restore the file from the original checkpoint") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{cfg_path}: expected a JSON object")
    return cfg


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        if (model_dir / "pytorch_model.bin").exists():
            raise ModelError(
                f"{model_dir}: only pytorch_model.bin (a pickle) is present; convert it to safetensors first — "
                f"pickles from untrusted sources can execute code, so ghost_vllm never loads them"
            )
        raise ModelError(f"{model_dir}: no *.safetensors weight files")
    return files


def check_safetensors_complete(path: Path) -> None:
    """Raise :class:`ModelError` unless the file is exactly header + the data its header describes (catches
    truncated downloads, which safetensors itself only notices when a tensor is read)."""
    size = path.stat().st_size
    header, base = safetensors_header(path)
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{path}: corrupt safetensors header ({e}); re-download or re-export the checkpoint") from None
    if base + end != size:
        raise ModelError(
            f"{path}: truncated or padded safetensors file ({size:,} bytes, header describes {base + end:,}); "
            f"re-download or re-export the checkpoint"
        )


def weight_shapes(model_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name → (shape, dtype) from the safetensors headers, without loading any weight."""
    from safetensors import safe_open

    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in _safetensors_files(model_dir):
        check_safetensors_complete(f)
        try:
            with safe_open(str(f), framework="pt") as h:
                for name in h.keys():
                    sl = h.get_slice(name)
                    shapes[name] = (tuple(sl.get_shape()), str(sl.get_dtype()))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise ModelError(f"{f}: unreadable safetensors file ({str(e).splitlines()[0]}); the file is truncated or corrupt — re-download or re-export it") from None
    return shapes


def _expected_mixer_shapes(layout, N: int) -> dict[str, tuple[int, ...]]:
    new = layout.with_state_size(N)
    H = layout.num_heads
    return {
        "in_proj.weight": (new.in_proj_rows, layout.hidden_size),
        "conv1d.weight": (new.conv_dim, 1, layout.conv_kernel),
        "A_log": (H,),
        "D": (H,),
        "dt_bias": (H,),
        "out_proj.weight": (layout.hidden_size, layout.intermediate_size),
    }


def model_family(cfg: dict[str, Any], where: str = "config.json"):
    """The :class:`~ghost_vllm.families.Family` of a config dict, its Mamba layers and mixer layout checked
    (:class:`ModelError` naming the supported families, or the config key that is wrong)."""
    from ghost_vllm.families import family_for_config

    family = family_for_config(cfg, where)
    try:
        family.layout(cfg)
        if not family.mamba_layers(cfg):
            raise ValueError("no Mamba2 layer in the layer pattern")
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{where}: not a valid {family.hf_architectures[0]} config ({e}); restore the original "
                         f"config.json") from None
    return family


def mixer_prefix(family, cfg: dict[str, Any], layer: int, shapes: dict[str, Any], where: Path) -> str:
    """The on-disk prefix of layer ``layer``'s mixer tensors (the family may know several spellings)."""
    for prefix in family.mixer_prefixes(cfg, layer):
        if f"{prefix}in_proj.weight" in shapes:
            return prefix
    raise ModelError(f"{where}: tensor {family.mixer_prefixes(cfg, layer)[0]}in_proj.weight is missing from the "
                     f"safetensors files")


def validate_model_dir(model_dir: Path) -> dict[str, Any]:
    """Check config and the Mamba2 mixers' weight shapes of a HF model directory of a supported family; return the
    config. Loads no weights."""
    cfg = read_config(model_dir)
    family = model_family(cfg, f"{model_dir}/config.json")
    if family.name != "mamba2":
        sizes = family.state_sizes(cfg, f"{model_dir}/config.json")
        _check_mixer_shapes(model_dir, family, cfg, sizes, weight_shapes(model_dir))
        return cfg
    for key in ("hidden_size", "num_hidden_layers", "num_heads", "head_dim", "n_groups", "state_size"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ModelError(f"{model_dir}/config.json: {key} = {v!r}; expected a positive integer")
    if cfg["num_heads"] % cfg["n_groups"]:
        raise ModelError(f"{model_dir}/config.json: n_groups {cfg['n_groups']} does not divide num_heads {cfg['num_heads']}")
    expand = cfg.get("expand", 2)
    if cfg["num_heads"] * cfg["head_dim"] != int(expand * cfg["hidden_size"]):
        raise ModelError(
            f"{model_dir}/config.json: num_heads·head_dim = {cfg['num_heads'] * cfg['head_dim']} but "
            f"expand·hidden_size = {int(expand * cfg['hidden_size'])}; the config is inconsistent"
        )
    sizes = config_state_sizes(cfg, f"{model_dir}/config.json")
    shapes = weight_shapes(model_dir)
    _check_mixer_shapes(model_dir, family, cfg, sizes, shapes)
    if not any(k.startswith("backbone.embedding") for k in shapes):
        raise ModelError(f"{model_dir}: no embedding tensor (backbone.embeddings.weight) in the safetensors files")
    return cfg


def _check_mixer_shapes(model_dir: Path, family, cfg: dict[str, Any], sizes: Sequence[int],
                        shapes: dict[str, Any]) -> None:
    layout = family.layout(cfg)
    for i, n in zip(family.mamba_layers(cfg), sizes):
        prefix = mixer_prefix(family, cfg, i, shapes, model_dir)
        for suffix, shape in _expected_mixer_shapes(layout, n).items():
            name = f"{prefix}{suffix}"
            if name not in shapes:
                raise ModelError(f"{model_dir}: tensor {name} is missing from the safetensors files")
            if shapes[name][0] != shape:
                raise ModelError(
                    f"{model_dir}: {name} has shape {list(shapes[name][0])}, config.json implies {list(shape)}"
                )


def source_hash(model_dir: Path, any_weights: bool = False) -> str:
    """sha256 over config.json and the safetensors files (in name order); ``any_weights`` also admits
    ``pytorch_model.bin`` (hashed as bytes, never unpickled)."""
    h = hashlib.sha256()
    weights = sorted(model_dir.glob("*.safetensors")) if any_weights else _safetensors_files(model_dir)
    if any_weights and not weights:
        weights = sorted(model_dir.glob("pytorch_model*.bin"))
    for f in [model_dir / "config.json", *weights]:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def load_model(model_dir: Path, dtype: str = "auto", device: str = "cpu"):
    """Validated ``Mamba2ForCausalLM`` in eval mode, group-wise gated norm patched in when ``n_groups > 1``. The
    safetensors are read tensor by tensor into the module (see :mod:`ghost_vllm.weights`): one copy of the model in
    memory, none mapped beside it (``from_pretrained`` keeps the mapped file resident beside its copies on CPU)."""
    from transformers import Mamba2Config

    from ghost_vllm.weights import TORCH_DTYPES, assemble_mamba2, read_safetensors

    cfg = validate_model_dir(model_dir)
    if cfg.get("model_type") != "mamba2":
        return _load_family_model(model_dir, cfg, dtype, device)
    sizes = config_state_sizes(cfg)
    target = None if dtype == "auto" else TORCH_DTYPES[dtype]
    sd: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(model_dir):
        sd.update(read_safetensors(f, target))
    config = Mamba2Config.from_pretrained(str(model_dir), local_files_only=True)
    if target is None:  # auto: the config's dtype, as from_pretrained does, else the stored one
        stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").replace("torch.", "")
        target = TORCH_DTYPES.get(stored) or next(iter(sd.values())).dtype
    return assemble_mamba2(config, sd, target, device, model_dir, strict_extra=False, state_sizes=sizes)


def _load_family_model(model_dir: Path, cfg: dict[str, Any], dtype: str, device: str):
    """A hybrid family's own transformers class (chosen by model_type; never remote code), safetensors only."""
    from transformers import AutoModelForCausalLM

    from ghost_vllm.families import family_for_config
    from ghost_vllm.weights import TORCH_DTYPES

    _safetensors_files(model_dir)  # refuses pickles before transformers could look at them
    torch_dtype = "auto" if dtype == "auto" else TORCH_DTYPES[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype, local_files_only=True,
                                                     use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{model_dir}: transformers could not load it ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200]})") from None
    model = model.to(device).eval()
    family_for_config(cfg).prepare_model(model)
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ModelError(f"{model_dir}: weight {name} contains NaN or Inf; the checkpoint is corrupt")
    return model


def resolve_tokenizer_path(override: str) -> Path:
    """``--tokenizer``/``model.tokenizer`` → a local tokenizer.json file or directory; a Hub id
    (``EleutherAI/gpt-neox-20b``) is resolved like a model id, tokenizer files only."""
    if is_hub_id(override):
        return hub_snapshot(override, TOKENIZER_FILES, "--tokenizer", "tokenizer.json or tokenizer directory")
    path = Path(override).expanduser()
    if not path.exists():
        raise ModelError(f"{override}: tokenizer not found; pass a tokenizer.json file, a directory holding one, or a "
                         f"Hugging Face Hub id (e.g. EleutherAI/gpt-neox-20b) with --tokenizer")
    return path


def load_tokenizer(model_dir: Path, override: Optional[str] = None):
    """Tokenizer from ``override`` (a tokenizer.json file, a directory, or a Hub id such as ``EleutherAI/gpt-neox-20b``
    resolved like a model id, tokenizer files only) or from the model directory."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    where = resolve_tokenizer_path(override) if override else model_dir
    try:
        if where.is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(where))
        if where.is_dir() and ((where / "tokenizer.json").is_file() or (where / "tokenizer_config.json").is_file()):
            return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as e:
        raise ModelError(f"{where}: tokenizer could not be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    raise ModelError(f"{where}: no tokenizer (tokenizer.json); pass --tokenizer with a tokenizer.json, a directory or a "
                     f"Hub id (the state-spaces mamba2 checkpoints ship none; theirs is EleutherAI/gpt-neox-20b, "
                     f"e.g. ../shared/data/tokenizers/gpt-neox-20b.json)")


def read_ghost_json(model_dir: Path) -> dict[str, Any]:
    path = model_dir / GHOST_FILE
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no {GHOST_FILE}; this is not a ghost checkpoint (create one with 'ghost-vllm prune')")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-run 'ghost-vllm prune'") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(target: Path) -> list[Path]:
    """Remove temporary directories left beside ``target`` by writers that died (their pid is gone)."""
    removed = []
    parent = target.parent if str(target.parent) else Path(".")
    for tmp in parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(tmp.name[len(f".{target.name}.tmp-") :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("removed stale temporary directory %s left by a killed run (pid %d)", tmp, pid)
            removed.append(tmp)
    return removed


def check_output_location(target: Path) -> None:
    """Cheap pre-flight check of ``target``'s location: the nearest existing ancestor must be a writable directory."""
    ancestor = target.parent if str(target.parent) else Path(".")
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{target}: cannot create the output directory here ({ancestor} is not a directory); "
                          f"choose a writable --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: cannot create the output directory here ({ancestor} is not writable); "
                          f"choose a writable --out")


def apply_umask(path: Path) -> None:
    """Give ``path`` (a file, or a directory and everything in it) the modes a plain ``open``/``mkdir`` would under the
    process umask: temporary files and directories are created owner-only (0600/0700), and an atomic rename keeps
    that, so a server or a metrics collector running as another user could not read the result."""
    umask = os.umask(0)
    os.umask(umask)
    paths = [path, *Path(path).rglob("*")] if Path(path).is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if Path(p).is_dir() else 0o666) & ~umask)


def _prepare_target(target: Path, overwrite: bool) -> Path:
    """Check the target and return a fresh temporary directory beside it."""
    if target.exists() and not overwrite:
        raise OutputError(f"{target}: already exists; pass --overwrite to replace it or choose another --out")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(target)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=parent))
    except OSError as e:
        raise OutputError(f"{parent}: cannot create the output directory here ({e.strerror}); choose a writable --out") from None


def write_checkpoint(
    model, target: Path, ghost: dict[str, Any], source_dir: Path, overwrite: bool = False,
    tokenizer_override: Optional[str] = None,
) -> Path:
    """Save ``model`` (safetensors + config.json), the tokenizer files and ``ghost.json`` to ``target`` atomically."""
    tmp = _prepare_target(target, overwrite)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        from ghost_vllm.families import family_for_config

        # model_type stays the family's: transformers still loads it with the family's own class
        cfg["architectures"] = [family_for_config(cfg).ghost_architecture]
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        tok_src = Path(tokenizer_override) if tokenizer_override else source_dir
        if tok_src.is_file():
            shutil.copy(tok_src, tmp / "tokenizer.json")
        else:
            for name in TOKENIZER_FILES:
                if (tok_src / name).is_file():
                    shutil.copy(tok_src / name, tmp / name)
        (tmp / GHOST_FILE).write_text(json.dumps(ghost, indent=1) + "\n", encoding="utf-8")
        apply_umask(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except Exception as e:  # OSError, or the serializer's own error type wrapping one (disk full, quota, …)
        shutil.rmtree(tmp, ignore_errors=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise OutputError(f"{target}: writing the checkpoint failed ({why}); nothing was left behind") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
