"""Loading Mamba2 weights with one copy of the model in memory.

``read_safetensors`` reads a file tensor by tensor with plain reads (no memory map: mapped pages that were copied out
would stay resident beside the copies until the file is closed, ≈ 2× the model at the peak) and converts each tensor
to the target dtype as it arrives. ``assemble_mamba2`` builds transformers' ``Mamba2ForCausalLM`` on the meta device
and assigns those tensors to it, so the module owns them without a further copy.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import safe_open

from ghost_vllm.errors import ModelError
from ghost_vllm.ghost_format import PROJ_IN, PROJ_OUT
from ghost_vllm.mamba.projection import attach_projection, project_mixers

__all__ = ["TORCH_DTYPES", "safetensors_files", "safetensors_header", "read_safetensors", "check_mamba2_weights",
           "assemble_mamba2", "load_mamba2", "load_transformers_model"]

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def safetensors_files(model_dir: Path) -> list[Path]:
    """The directory's ``*.safetensors`` in name order; a pickle-only directory is refused (never unpickled)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        if (model_dir / "pytorch_model.bin").exists():
            raise ModelError(
                f"{model_dir}: only pytorch_model.bin (a pickle) is present; convert it to safetensors first — "
                f"pickles from untrusted sources can execute code, so ghost_vllm never loads them"
            )
        raise ModelError(f"{model_dir}: no *.safetensors weight files")
    return files


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset its data starts at; :class:`ModelError` if unreadable."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length beyond end of file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: corrupt safetensors header ({e}); re-download or re-export the checkpoint") from None
    return header, 8 + n


def read_safetensors(path: Path, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, each in its own storage, floating ones converted to ``dtype`` on the
    way in (one tensor at a time)."""
    out: dict[str, torch.Tensor] = {}
    size = path.stat().st_size
    header, base = safetensors_header(path)
    with path.open("rb") as fh:
        for name, meta in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                                 key=lambda kv: kv[1]["data_offsets"][0]):
            st_dtype = _ST_DTYPES.get(meta.get("dtype"))
            if st_dtype is None:
                raise ModelError(f"{path}: tensor {name} has unsupported dtype {meta.get('dtype')!r}")
            lo, hi = (int(x) for x in meta["data_offsets"])
            shape = [int(x) for x in meta["shape"]]
            if hi - lo != math.prod(shape) * st_dtype.itemsize or base + hi > size:
                raise ModelError(f"{path}: tensor {name} does not fit its header (truncated or corrupt file); "
                                 f"re-download or re-export it")
            buf = bytearray(hi - lo)
            fh.seek(base + lo)
            if fh.readinto(buf) != len(buf):
                raise ModelError(f"{path}: tensor {name} is cut short; re-download or re-export the file")
            t = (torch.frombuffer(buf, dtype=st_dtype) if buf else torch.empty(0, dtype=st_dtype)).reshape(shape)
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            out[name] = t
    return out


def check_mamba2_weights(model, sd: dict[str, torch.Tensor], where: Path, strict_extra: bool = True) -> None:
    """``sd`` (HF names) against ``model``'s parameters (a meta model is enough): every key present with its shape;
    a tied ``lm_head.weight`` is dropped; unknown keys are an error (``strict_extra``) or dropped with a warning."""
    tied = bool(getattr(model.config, "tie_word_embeddings", True))
    if tied:
        sd.pop("lm_head.weight", None)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise ModelError(f"{where}: {len(missing)} weight(s) missing, e.g. {missing[0]}; the checkpoint is incomplete")
    extra = sorted(set(sd) - set(expected))
    if extra and strict_extra:
        raise ModelError(f"{where}: unexpected weight {extra[0]} ({len(extra)} in all); not a pure Mamba2 checkpoint")
    for k in extra:
        log.warning("%s: ignoring unexpected weight %s", where, k)
        del sd[k]
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise ModelError(f"{where}: {k} has shape {tuple(sd[k].shape)}, config.json implies {shape}; "
                             f"config and weights disagree")


def assemble_mamba2(config, sd: dict[str, torch.Tensor], torch_dtype: torch.dtype, device: str, where: Path,
                    strict_extra: bool = True, state_sizes: Optional[Sequence[int]] = None,
                    state_ranks: Optional[Sequence[int]] = None):
    """``Mamba2ForCausalLM(config)`` owning the tensors of ``sd`` (HF names), checked key by key and shape by shape;
    mixers built at their per-layer ``state_sizes`` where given, projected to ``state_ranks`` (float32 projection
    tensors, :mod:`ghost_vllm.mamba.projection`) where given; tied embeddings tied; group-wise gated norm patched
    in; NaN/Inf refused."""
    from transformers import Mamba2ForCausalLM

    from ghost_vllm.mamba.norm import patch_group_norm

    tied = bool(getattr(config, "tie_word_embeddings", True))
    config.dtype = torch_dtype
    with torch.device("meta"):
        model = Mamba2ForCausalLM(config)
        if state_sizes is not None:
            from ghost_vllm.mamba.budgets import shrink_mixers

            shrink_mixers(model, state_sizes)
        if state_ranks is not None:
            project_mixers(model, state_ranks)
    check_mamba2_weights(model, sd, where, strict_extra)
    for k in list(sd):  # one tensor at a time: never two full copies of the model
        want = torch.float32 if k.endswith((PROJ_IN, PROJ_OUT)) else torch_dtype
        if sd[k].dtype != want or sd[k].device != torch.device(device):
            sd[k] = sd[k].to(device=device, dtype=want)
    model.load_state_dict(sd, strict=False, assign=True)
    sd.clear()
    if tied:
        model.lm_head.weight = model.backbone.embeddings.weight
    model.eval()
    patch_group_norm(model)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{where}: {left[0]} was not loaded ({len(left)} tensors in all); the checkpoint is incomplete")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ModelError(f"{where}: weight {name} contains NaN or Inf; the checkpoint is corrupt")
    return model


def load_mamba2(model_dir: Path, cfg: dict, dtype: str = "auto", device: str = "cpu"):
    """``Mamba2ForCausalLM`` of a validated Hugging Face directory (per-layer state sizes built), read tensor by
    tensor into the module: one copy of the model in memory, none mapped beside it (``from_pretrained`` keeps the
    mapped file resident beside its copies on CPU). Group-wise gated norm patched in when ``n_groups > 1``."""
    from transformers import Mamba2Config

    from ghost_vllm.ghost_format import config_state_ranks, config_state_sizes

    sizes = config_state_sizes(cfg)
    ranks = config_state_ranks(cfg)
    target = None if dtype == "auto" else TORCH_DTYPES[dtype]
    sd: dict[str, torch.Tensor] = {}
    for f in safetensors_files(model_dir):
        sd.update(read_safetensors(f, target))
    config = Mamba2Config.from_pretrained(str(model_dir), local_files_only=True)
    if target is None:  # auto: the config's dtype, as from_pretrained does, else the stored one
        stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").replace("torch.", "")
        target = TORCH_DTYPES.get(stored) or next(iter(sd.values())).dtype
    return assemble_mamba2(config, sd, target, device, model_dir, strict_extra=False, state_sizes=sizes,
                           state_ranks=ranks)


_UNSET = object()


def attach_saved_projections(model_dir: Path, mixers: Sequence[torch.nn.Module], prefixes: Sequence[Sequence[str]],
                             ranks: Sequence[int]) -> None:
    """Attach the saved ``state_proj_in`` / ``state_proj_out`` of every Mamba layer of a projected checkpoint to a
    model loaded with its family's own transformers class (which has no such tensors and skips them): ``mixers`` and
    ``prefixes`` (the layer's possible on-disk name prefixes) in Mamba-layer order. Only those tensors are read."""
    found: dict[str, torch.Tensor] = {}
    for f in safetensors_files(model_dir):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if k.endswith((PROJ_IN, PROJ_OUT)):
                    found[k] = fh.get_tensor(k)
    for mixer, options, r in zip(mixers, prefixes, ranks):
        prefix = next((p for p in options if f"{p}{PROJ_IN}" in found), None)
        if prefix is None or f"{prefix}{PROJ_OUT}" not in found:
            raise ModelError(f"{model_dir}: {options[0]}{PROJ_IN} / {PROJ_OUT} missing from the safetensors files "
                             f"while config.json lists ghost_state_ranks; re-run 'ghost-vllm prune'")
        T, S = found[f"{prefix}{PROJ_IN}"], found[f"{prefix}{PROJ_OUT}"]
        if int(T.shape[1]) != int(r):
            raise ModelError(f"{model_dir}: {prefix}{PROJ_IN} has rank {int(T.shape[1])}, config.json says {r}")
        attach_projection(mixer, T.float(), S.float())


def load_transformers_model(model_dir: Path, dtype: str = "auto", device: str = "cpu", projected: bool = False):
    """A model's own transformers class (chosen by model_type; never remote code), safetensors only, every weight
    finite, in eval mode. ``projected``: the checkpoint also holds projection tensors, which that class does not
    have (:func:`attach_saved_projections` reads them): transformers is told to skip them quietly."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    safetensors_files(model_dir)  # refuses pickles before transformers could look at them
    torch_dtype = "auto" if dtype == "auto" else TORCH_DTYPES[dtype]
    cls, saved = None, None
    try:
        if projected:  # the class's own list of keys to skip, plus ours, for this one load
            cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(str(model_dir), local_files_only=True))]
            saved = cls.__dict__.get("_keys_to_ignore_on_load_unexpected", _UNSET)
            cls._keys_to_ignore_on_load_unexpected = [*(cls._keys_to_ignore_on_load_unexpected or []),
                                                      rf"\.({PROJ_IN}|{PROJ_OUT})$"]
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype, local_files_only=True,
                                                     use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"{model_dir}: transformers could not load it ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200]})") from None
    finally:
        if cls is not None:
            if saved is _UNSET:
                del cls._keys_to_ignore_on_load_unexpected
            else:
                cls._keys_to_ignore_on_load_unexpected = saved
    model = model.to(device).eval()
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ModelError(f"{model_dir}: weight {name} contains NaN or Inf; the checkpoint is corrupt")
    return model
