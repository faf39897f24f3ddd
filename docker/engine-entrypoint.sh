#!/bin/sh
# Entrypoint of the kvfs engine image: `kvfs-engine-entrypoint vllm serve ARGS...`.
#
# vLLM serves /metrics from its API-server process, but the kvfs connector counts (kvfs_connector_*,
# kvfs_block_*, kvfs_journal_*) in the engine-core and worker processes. With PROMETHEUS_MULTIPROC_DIR set, every
# process writes its metrics to files there and /metrics aggregates them all. Those files must start empty on
# each run (a container restart keeps the pod's volumes), so remove the previous run's metric files -- only
# those (*.db directly in that directory) -- then hand over to the command.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -maxdepth 1 -type f -name '*.db' -delete
fi
exec "$@"
