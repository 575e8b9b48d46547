"""The bundled reference Mamba2: data preparation, training, and the shipped checkpoint."""

from pathlib import Path

__all__ = ["REFERENCE_DIR", "MODEL_DIR", "CALIBRATION_TEXT", "VALIDATION_TEXT"]

REFERENCE_DIR = Path(__file__).resolve().parent
MODEL_DIR = REFERENCE_DIR / "model"
# held-out articles (never trained on), split by article into a calibration half and a validation half
CALIBRATION_TEXT = REFERENCE_DIR / "data" / "calibration.txt"
VALIDATION_TEXT = REFERENCE_DIR / "data" / "validation.txt"
