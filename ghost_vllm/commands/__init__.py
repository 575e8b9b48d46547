"""Command implementations behind the CLI (each usable from Python too)."""
