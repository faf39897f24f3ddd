# kvfs-evictor and the kvfs CLI: slim, no vLLM, no torch. Build from the repository root with BuildKit
# (Docker 23+: RUN --mount, and docker/evictor.Dockerfile.dockerignore keeps the context small):
#   docker build -f docker/evictor.Dockerfile -t kvfs-evictor:0.1.0 .
# Base image pinned by tag; no registry was reachable where this was written, so no digest: pin
# `python:3.11.14-slim-bookworm@sha256:...` from your registry mirror for byte-identical rebuilds.

FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY docker/requirements-evictor.txt docker/
# Every dependency exactly as pinned; --no-deps so nothing unpinned sneaks in (the list is a full closure).
RUN pip wheel --no-cache-dir --no-deps --only-binary=:all: -w /wheels -r docker/requirements-evictor.txt
COPY pyproject.toml README.md ./
COPY kvfs kvfs
COPY evictor evictor
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11.14-slim-bookworm
# The same uid/gid as the engines (manifests/base: runAsUser 1000, runAsGroup/fsGroup 2000).
RUN groupadd --gid 2000 kvfs && useradd --uid 1000 --gid 2000 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin kvfs
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl && pip check
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 1000:2000
EXPOSE 9400
ENTRYPOINT ["kvfs-evictor"]
