# syntax=docker/dockerfile:1
# swarm-chatops image: `docker build -t swarm-chatops .`
#
# Run (HTTP mode; mount your config, give the secrets as environment variables):
#   docker run --rm -p 3000:3000 --stop-timeout 60 \
#     -v "$PWD/chatops.yml:/etc/chatops/chatops.yml:ro" \
#     -e CHATOPS_SLACK_BOT_TOKEN -e CHATOPS_SLACK_SIGNING_SECRET \
#     -e CHATOPS_DATABASE_URL=postgresql://chatops:...@db/chatops \
#     swarm-chatops
# Socket Mode: add -e CHATOPS_SLACK_APP_TOKEN and the command `chatops serve --host 0.0.0.0 --socket-mode`.

# Base image. Not pinned by digest in this file: the digest of python:3.11-slim could not be looked up
# where this was written (no access to a container registry), and a made-up digest would break every
# build. Pin it for a reproducible build by passing the digest of the image you have vetted, e.g.
#   docker buildx imagetools inspect python:3.11-slim        # or: docker pull python:3.11-slim &&
#                                                            # docker inspect -f '{{index .RepoDigests 0}}' python:3.11-slim
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> -t swarm-chatops .
# or by writing that reference as the default below (then Dependabot / Renovate can keep it current).
# Both stages use the same image, so the venv copied from the builder matches the runtime's Python.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the wheel and install it with its dependencies into a venv ---------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv
# pyproject.toml names README.md as the package's readme, so the build needs it
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY commands ./commands
COPY integrations ./integrations
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install /tmp/wheels/*.whl \
 && /opt/venv/bin/chatops --help >/dev/null

# --- runtime: the venv only, no build tools, no sources, not root -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHATOPS_CONFIG=/etc/chatops/chatops.yml \
    CHATOPS_DATABASE_URL=sqlite:////var/lib/chatops/chatops.db \
    CHATOPS_LOG_FORMAT=json \
    CHATOPS_PORT=3000

RUN groupadd --system --gid 10001 chatops \
 && useradd --system --uid 10001 --gid chatops --home-dir /var/lib/chatops --shell /usr/sbin/nologin chatops \
 && mkdir -p /etc/chatops /var/lib/chatops \
 && chown chatops:chatops /var/lib/chatops

# same path as in the builder: the venv's scripts point at /opt/venv/bin/python
COPY --from=builder /opt/venv /opt/venv
# an example to start from; mount the real config over /etc/chatops/chatops.yml
COPY chatops.example.yml /etc/chatops/chatops.example.yml

WORKDIR /var/lib/chatops
# the default SQLite database lives here; in production point CHATOPS_DATABASE_URL at PostgreSQL
VOLUME ["/var/lib/chatops"]
USER 10001:10001
EXPOSE 3000

# /healthz answers while the process serves; /readyz (database and migrations) is for readiness probes
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHATOPS_PORT', '3000'), timeout=4)"]

# SIGTERM (docker stop, Kubernetes) starts a graceful shutdown: in-flight work finishes within
# CHATOPS_SHUTDOWN_GRACE_SECONDS and the outbox is flushed; give the container time for that
# (docker stop -t / --stop-timeout, terminationGracePeriodSeconds), see docs/operations.md.
STOPSIGNAL SIGTERM

# Outside a container `chatops serve` binds 127.0.0.1 by default. Inside one, 127.0.0.1 is the
# container's own loopback: published ports, the Kubernetes Service and the kubelet's probes arrive on
# the container's network interface, so the server must listen on 0.0.0.0 to be reachable at all.
# Who can reach that interface is decided outside (port publishing, Service, NetworkPolicy, ingress).
CMD ["chatops", "serve", "--host", "0.0.0.0"]
