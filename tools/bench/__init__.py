"""Benchmarks runnable from the repo: `python -m tools.bench` runs them all (`make bench`)."""
