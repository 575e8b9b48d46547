"""Mamba2 internals we rely on: tensor layout, a reference mixer/scan, group-wise gated norm, tiny test models."""
