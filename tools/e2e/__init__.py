"""The end-to-end benchmark in a real vLLM engine: `python -m tools.e2e` (see `tools/e2e/main.py`)."""
