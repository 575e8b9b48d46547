"""Recall benchmark: synthetic multi-query associative recall (MQAR) and a small Mamba2 trained on it.

Perplexity barely notices a lost state channel; recall of many key-value pairs does. ``mqar`` generates the task,
``train`` trains (and exports) the recall model: ``python -m ghost_vllm.recall.train --help``.
"""

from ghost_vllm.recall.mqar import FILLER, IGNORE, MQARBatch, MQARSpec, generate, query_correct

__all__ = ["FILLER", "IGNORE", "MQARBatch", "MQARSpec", "generate", "query_correct"]
