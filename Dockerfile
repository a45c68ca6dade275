# syntax=docker/dockerfile:1
# The print service's image: `docker build -t print-service .`, then
#   docker run --rm -p 8080:8080 -e MQTT_URL=... -e AMQP_URL=... print-service
#
# Two stages. The builder turns the project and every dependency into wheels: the
# dependencies exactly as requirements/service.lock pins them, each checked against its hash
# (binary wheels only, so no compiler is needed even there), and the project with the build
# backend of requirements/build.lock. Two builds of one commit install the same files. The
# final stage installs only those wheels, from a bind mount (nothing of the builder is copied
# into a layer), then removes pip, setuptools and wheel: no build or install tools stay behind.
#
# These steps are exercised without Docker by tests/test_deploy.py: it builds the wheels
# the same way, installs them into a fresh virtual environment with --no-index, runs
# `print-service --help`, starts the service and runs this file's HEALTHCHECK command.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The locks first: the dependencies' layer is rebuilt only when a lock changes.
COPY requirements/service.lock requirements/build.lock requirements/
RUN pip install --require-hashes -r requirements/build.lock \
 && pip wheel --require-hashes --only-binary=:all: --wheel-dir /wheels -r requirements/service.lock
# Only what the wheel is built from (pyproject names README.md as the long description).
COPY pyproject.toml README.md ./
COPY service/ service/
# The project's wheel, by the locked hatchling (no isolated build environment, which would
# take whatever hatchling is newest), beside the dependencies' in /wheels.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# --- final -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="print-service" \
      org.opencontainers.image.description="Message-driven print job service: MQTT commands in, AMQP job events out" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed, non-root UID/GID (10001): Kubernetes' runAsNonRoot can verify a numeric USER,
# and deploy/k8s sets runAsUser 10001 to match. /var/lib/print-service is its home and the
# only directory it writes to (the SQLite store, when DATABASE_URL points there).
RUN groupadd --system --gid 10001 print-service \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/print-service --shell /usr/sbin/nologin print-service \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/print-service

# Install from the builder's wheels only (--no-index: nothing is fetched here), then drop
# the installers themselves.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels print-service \
 && pip uninstall --yes setuptools wheel pip

WORKDIR /var/lib/print-service
USER 10001:10001

# The embedded default store is SQLite; give it an absolute path in the writable data dir.
# Several replicas need PostgreSQL: DATABASE_URL=postgresql://user:password@host/db.
ENV DATABASE_URL=sqlite:////var/lib/print-service/jobs.db

# /healthz, /readyz and /metrics (HTTP_PORT).
EXPOSE 8080

# Liveness only (/healthz): the process is up and its event loop answers. /readyz (brokers
# connected, store writable) is for orchestrators that route or gate on readiness. The slim
# image has no curl: Python's urllib does it, on HTTP_PORT when that is set.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/healthz', timeout=4)"]

# SIGTERM (the default stop signal) drains: see SHUTDOWN_TIMEOUT in README.md.
ENTRYPOINT ["print-service"]
CMD ["run"]
