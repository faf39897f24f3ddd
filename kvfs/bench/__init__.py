"""Benchmarks runnable from the repo: `python -m kvfs.bench` runs them all (`make bench`)."""
