"""Recall benchmark: synthetic multi-query associative recall (MQAR) and a small Mamba2 trained on it.

Perplexity barely notices a lost state channel; recall of many key-value pairs does. ``mqar`` generates the task,
``train`` trains (and exports) the recall model: ``python -m ghost_vllm.recall.train --help``; ``evaluate`` scores
any checkpoint of it; ``bundle`` ships the trained model inside the package.
"""

from pathlib import Path

from ghost_vllm.recall.mqar import FILLER, IGNORE, MQARBatch, MQARSpec, generate, query_correct

__all__ = ["FILLER", "IGNORE", "MQARBatch", "MQARSpec", "generate", "query_correct", "MODEL_DIR"]

MODEL_DIR = Path(__file__).resolve().parent / "model"
"""The bundled recall model (``--model recall``), written by ``python -m ghost_vllm.recall.bundle``."""
