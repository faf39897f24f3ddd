# A vLLM engine with the kvfs connector installed. Build from the repository root with BuildKit
# (Docker 23+: COPY --chmod, and docker/engine.Dockerfile.dockerignore keeps the context small):
#   docker build -f docker/engine.Dockerfile -t kvfs-engine:0.1.0 .
# The vLLM tag must match the vllm pin of pyproject.toml's `vllm` extra (checked by tests/manifests). Pinned by
# tag; pin `@sha256:...` from your registry mirror for byte-identical rebuilds.

FROM vllm/vllm-openai:v0.32.0
# vLLM, torch and their dependencies stay exactly as the image ships them: kvfs goes in with --no-deps and
# only the dependencies vLLM does not already require are added, pinned.
COPY docker/requirements-engine.txt /tmp/kvfs-src/docker/
# The vLLM image installs its own Python packages with uv (on its PATH) into the system interpreter: so do we.
RUN uv pip install --system --no-cache --no-deps -r /tmp/kvfs-src/docker/requirements-engine.txt
# setup.py builds kvfs._blockio, the block files' compiled path (the image has the compiler and headers Triton
# itself needs); without them the install still succeeds and the Python path runs (the check below says which).
COPY pyproject.toml setup.py README.md /tmp/kvfs-src/
COPY kvfs /tmp/kvfs-src/kvfs
COPY evictor /tmp/kvfs-src/evictor
COPY connector /tmp/kvfs-src/connector
# The check imports the modules vLLM loads (not the packages' empty __init__s), against this image's vLLM.
RUN uv pip install --system --no-cache --no-deps /tmp/kvfs-src && rm -rf /tmp/kvfs-src \
    && python3 -c "import kvfs.blockfile, kvfs.journal, connector.connector, connector.spec, connector.tier" \
    && python3 -c "from kvfs import nativeio; print('kvfs compiled block-file path:', nativeio.STATUS)"
# A passwd entry for the uid the manifests run as (getpwuid() callers: torch's cache dirs, getpass, ssh-less git).
RUN (getent group 2000 || groupadd --gid 2000 kvfs) \
    && (getent passwd 1000 || useradd --uid 1000 --gid 2000 --no-create-home --home-dir /tmp/home \
        --shell /usr/sbin/nologin kvfs)
COPY --chmod=0755 docker/engine-entrypoint.sh /usr/local/bin/kvfs-engine-entrypoint
# Engines run as uid 1000 / gid 2000 (manifests/base); HOME and caches are redirected to writable mounts there.
ENV PYTHONHASHSEED=0
ENTRYPOINT ["kvfs-engine-entrypoint", "vllm", "serve"]
