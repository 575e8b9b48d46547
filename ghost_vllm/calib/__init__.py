"""Calibration data: text sources → seeded token windows ``[nsamples, seq_len]``."""

from ghost_vllm.calib.sources import load_texts, resolve_source
from ghost_vllm.calib.windows import CalibrationSet, make_windows

__all__ = ["load_texts", "resolve_source", "CalibrationSet", "make_windows"]
