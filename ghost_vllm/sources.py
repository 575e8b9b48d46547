"""Where a model comes from: the bundled models (named once here), local directories and Hugging Face Hub ids.

Every command and benchmark turns a user's ``--model`` / ``MODEL`` into a directory through
:func:`resolve_model_path`, or into a :class:`ModelSource` (directory, HF-format config, family, on-disk format)
through :func:`resolve`; reading weights is :mod:`ghost_vllm.checkpoint`'s and the family's job.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ghost_vllm.errors import ModelError

__all__ = ["ModelSource", "resolve", "read_config", "BUNDLED_MODELS", "bundled_model_dir", "TOKENIZER_FILES", "HUB_PATTERNS", "is_hub_id", "hub_snapshot",
           "resolve_model_path", "require_model_dir"]

log = logging.getLogger(__name__)

# bundled name → what it is (directories in bundled_model_dir)
BUNDLED_MODELS = {
    "reference": "the reference Mamba2 (6 layers, state 128) trained here",
    "hybrid": "a Nemotron-H-shaped hybrid (6 Mamba2 + 2 attention + 2 MLP layers) trained here",
    "recall": "the MQAR recall Mamba2 (2 layers) trained here",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; :class:`ModelError` in one line when missing or unreadable."""
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



def bundled_model_dir(name: str) -> Path:
    from ghost_vllm import recall, reference

    return {"reference": reference.MODEL_DIR, "recall": recall.MODEL_DIR, "hybrid": reference.HYBRID_MODEL_DIR}[name]


def resolve_model_path(path: str) -> Path:
    """A bundled name, a local directory or a Hub id (``org/name``, through the local Hugging Face cache) → the model
    directory. A missing local path is returned as is (the validators say "model directory not found")."""
    if path in BUNDLED_MODELS:
        bundled = bundled_model_dir(path)
        if not (bundled / "config.json").is_file():
            raise ModelError(f"the bundled {path} model is missing at {bundled}; reinstall ghost_vllm from a full clone")
        return bundled
    local = Path(path).expanduser()
    if not is_hub_id(path):
        return local  # a local path (missing ones get "model directory not found" from the validators)
    return hub_snapshot(path)


@dataclass(frozen=True)
class ModelSource:
    """What a model name resolved to: its directory, its config as a Hugging Face ``config.json`` dict (a mamba_ssm
    checkpoint's converted, ``model_type`` set), the family that prunes and serves it, and the on-disk layout."""

    name: str
    path: Path
    config: dict[str, Any]
    format: str  # "hf" (config.json + *.safetensors) | "mamba_ssm" (state-spaces: d_model/n_layer, pytorch_model.bin)

    @property
    def family(self):
        from ghost_vllm.families import model_family

        return model_family(self.config, f"{self.path}/config.json")


def resolve(name: str) -> ModelSource:
    """A bundled name, a local directory or a Hub id → :class:`ModelSource`, its config read and its family checked
    (one-line :class:`ModelError` otherwise). Weights are neither read nor validated here."""
    from ghost_vllm.families import model_family
    from ghost_vllm.mamba.mamba_ssm_format import hf_config_from_mamba_ssm, is_mamba_ssm_config

    path = resolve_model_path(name)
    raw = read_config(path)
    fmt = "mamba_ssm" if is_mamba_ssm_config(raw) else "hf"
    source = ModelSource(name, path, hf_config_from_mamba_ssm(raw) if fmt == "mamba_ssm" else raw, fmt)
    model_family(source.config, f"{path}/config.json")
    return source


def require_model_dir(name: str, what: str = "MODEL") -> Path:
    """:func:`resolve_model_path`, and a one-line :class:`ModelError` unless the result is a directory with a
    ``config.json`` — for commands that would otherwise start an engine or an evaluation first."""
    model_dir = resolve_model_path(name)
    if not model_dir.is_dir():
        raise ModelError(f"{what} {name}: no such model directory; pass a checkpoint directory, a Hub id (org/name) "
                         f"or a bundled name ({', '.join(BUNDLED_MODELS)})")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{what} {name}: {model_dir} has no config.json; pass a Hugging Face-format checkpoint "
                         f"directory (config.json + *.safetensors)")
    return model_dir


def is_hub_id(path: str) -> bool:
    """``org/name`` that is not a local path (nor under a local directory named ``org``)."""
    return bool(_HUB_ID.fullmatch(path)) and not Path(path).expanduser().exists() and not Path(path.split("/")[0]).exists()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model.bin", *TOKENIZER_FILES)


def hub_snapshot(repo_id: str, patterns: Sequence[str] = HUB_PATTERNS, flag: str = "--model",
                 what: str = "model directory") -> Path:
    """A Hub id (``state-spaces/mamba2-130m``) that is not a local directory: the local Hugging Face cache's snapshot,
    downloaded first unless ``HF_HUB_OFFLINE=1``. Only ``patterns`` are fetched (config, weights and tokenizer files
    for a model; tokenizer files for a tokenizer)."""
    from huggingface_hub import snapshot_download

    log.info("%s is not a local path; resolving it as a Hugging Face Hub id", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except Exception as e:  # offline and not cached, unknown repo, gated, network down
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{repo_id}: not a local path, and fetching it as a Hugging Face Hub id failed "
                         f"({type(e).__name__}: {why}); pass a local {what} with {flag}") from None
