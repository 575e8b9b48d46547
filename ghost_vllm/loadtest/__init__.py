"""Benchmarks against real servers: capacity-planning load tests (dense vs pruned, same state memory)."""
