"""Tools run from the repository (never shipped in the wheel): benchmarks, the demo, trace generators, oracles,
the replay suite, the GPU data-path checks and the end-to-end benchmark in a real vLLM engine."""
