"""The bundled reference Mamba2: data preparation, training, and the shipped checkpoint."""

from pathlib import Path

__all__ = ["REFERENCE_DIR", "MODEL_DIR", "HYBRID_MODEL_DIR", "CALIBRATION_TEXT", "VALIDATION_TEXT"]

REFERENCE_DIR = Path(__file__).resolve().parent
MODEL_DIR = REFERENCE_DIR / "model"
# a Nemotron-H-shaped hybrid trained on the same text and tokenizer (configs/hybrid-train.yaml)
HYBRID_MODEL_DIR = REFERENCE_DIR / "hybrid_model"
# held-out articles (never trained on), split by article into a calibration half and a validation half
CALIBRATION_TEXT = REFERENCE_DIR / "data" / "calibration.txt"
VALIDATION_TEXT = REFERENCE_DIR / "data" / "validation.txt"
