"""Per-layer statistics: capture of layer inputs, streaming accumulators."""
