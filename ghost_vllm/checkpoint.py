"""Reading model directories once :mod:`ghost_vllm.sources` has resolved the name (config and safetensors headers
validated cheaply before any weight is loaded; the family checks its own keys and loads its own class) and writing
ghost checkpoints atomically (temporary directory beside the target, renamed at the end) with ``ghost.json``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from ghost_vllm.errors import ModelError, OutputError
from ghost_vllm.families import model_family
from ghost_vllm.ghost_format import (PROJ_IN, PROJ_OUT, STATE_DTYPE_KEY, STATE_RANKS_KEY,
                                    mark_ghost_config, write_ghost_json)
from ghost_vllm.sources import TOKENIZER_FILES, hub_snapshot, is_hub_id, read_config
from ghost_vllm.weights import safetensors_files, safetensors_header

__all__ = [
    "resolve_tokenizer_path",
    "weight_shapes",
    "check_safetensors_complete",
    "validate_model_dir",
    "source_hash",
    "load_model",
    "load_tokenizer",
    "write_checkpoint",
    "clean_stale_temporaries",
    "apply_umask",
    "check_output_location",
]

log = logging.getLogger(__name__)

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
    for f in safetensors_files(model_dir):
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


def mixer_prefix(family, cfg: dict[str, Any], layer: int, shapes: dict[str, Any], where: Path) -> str:
    """The on-disk prefix of layer ``layer``'s mixer tensors (the family may know several spellings)."""
    for prefix in family.mixer_prefixes(cfg, layer):
        if f"{prefix}in_proj.weight" in shapes:
            return prefix
    raise ModelError(f"{where}: tensor {family.mixer_prefixes(cfg, layer)[0]}in_proj.weight is missing from the "
                     f"safetensors files")


def validate_model_dir(model_dir: Path) -> dict[str, Any]:
    """Check config and the Mamba2 mixers' weight shapes of a HF model directory of a supported family (the family
    checks its own keys and tensors); return the config. Loads no weights."""
    cfg = read_config(model_dir)
    where = f"{model_dir}/config.json"
    family = model_family(cfg, where)
    family.check_config(cfg, where)
    sizes = family.state_sizes(cfg, where)
    shapes = weight_shapes(model_dir)
    _check_mixer_shapes(model_dir, family, cfg, sizes, shapes)
    family.check_tensors(shapes, model_dir)
    return cfg


def _check_mixer_shapes(model_dir: Path, family, cfg: dict[str, Any], sizes: Sequence[int],
                        shapes: dict[str, Any]) -> None:
    layout = family.layout(cfg)
    ranks = family.state_ranks(cfg, f"{model_dir}/config.json")
    for j, (i, n) in enumerate(zip(family.mamba_layers(cfg), sizes)):
        prefix = mixer_prefix(family, cfg, i, shapes, model_dir)
        expected = _expected_mixer_shapes(layout, n)
        if ranks is not None:  # a projected state: T [G, r, N], S [G, N, r]
            G, r = layout.n_groups, ranks[j]
            expected |= {PROJ_IN: (G, r, n), PROJ_OUT: (G, n, r)}
        else:
            for suffix in (PROJ_IN, PROJ_OUT):
                if f"{prefix}{suffix}" in shapes:
                    raise ModelError(f"{model_dir}: tensor {prefix}{suffix} is present but config.json has no "
                                     f"{STATE_RANKS_KEY}; the checkpoint was edited or mixed — re-run 'ghost-vllm "
                                     f"prune'")
        for suffix, shape in expected.items():
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
    weights = sorted(model_dir.glob("*.safetensors")) if any_weights else safetensors_files(model_dir)
    if any_weights and not weights:
        weights = sorted(model_dir.glob("pytorch_model*.bin"))
    for f in [model_dir / "config.json", *weights]:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def load_model(model_dir: Path, dtype: str = "auto", device: str = "cpu"):
    """The validated model of a Hugging Face directory, loaded by its family (:meth:`Family.load`), in eval mode."""
    cfg = validate_model_dir(model_dir)
    return model_family(cfg, f"{model_dir}/config.json").load(model_dir, cfg, dtype, device)


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
        cfg = mark_ghost_config(cfg, model_family(cfg, str(cfg_path)).ghost_architecture)
        if ghost.get("state_dtype"):
            cfg[STATE_DTYPE_KEY] = ghost["state_dtype"]
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        tok_src = Path(tokenizer_override) if tokenizer_override else source_dir
        if tok_src.is_file():
            shutil.copy(tok_src, tmp / "tokenizer.json")
        else:
            for name in TOKENIZER_FILES:
                if (tok_src / name).is_file():
                    shutil.copy(tok_src / name, tmp / name)
        write_ghost_json(tmp, ghost)
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
