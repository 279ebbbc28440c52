# The gateway as a container image, built in stages so the image holds run-time packages only.
#   docker build -t payment-gateway .                 # the gateway (the last stage, `runtime`)
#   docker build --target demo -t payment-gateway:demo .   # + web3, for the dev chain's deploy job
#
# The base is pinned by exact version and by digest (the multi-architecture index of
# python:3.11.15-slim-bookworm), so a rebuild starts from the same bytes; to move to a newer
# Python, change both (docker buildx imagetools inspect python:3.11.N-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# --- build: a venv with the runtime lock (hash-checked) and the gateway package -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY requirements.runtime.lock /tmp/
# --require-hashes: every file pip fetches must be the very file the lock recorded (scripts/lock).
RUN /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.runtime.lock
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
# The project itself has no hash to check; its dependencies are all in the lock, hence --no-deps.
# (setuptools, its build backend, is fetched into pip's isolated build env and stays out of the venv.)
RUN /opt/venv/bin/pip install --no-deps . && /opt/venv/bin/python -m pip uninstall --yes --quiet pip

# --- demo-build: the same venv + web3 (requirements.demo.lock), for `python -m gateway.dev.chain` --
FROM build AS demo-build
COPY requirements.demo.lock /tmp/
# (the venv has no pip of its own any more: the base image's pip installs into it)
RUN python -m pip --python /opt/venv/bin/python install --require-hashes -r /tmp/requirements.demo.lock

# --- base: what both images share (no compiler, no pip cache, no tests) -------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY examples ./examples
COPY config ./config
COPY chain/artifacts ./chain/artifacts
RUN useradd --system --uid 10001 --home-dir /app gateway \
    && mkdir -p /var/lib/gateway && chown gateway /var/lib/gateway
ENV GATEWAY_STATE_DIR=/var/lib/gateway GATEWAY_LISTEN=0.0.0.0:8080 GATEWAY_ADMIN_LISTEN=0.0.0.0:9090
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "config/gateway.yaml"]

# --- demo: the gateway + web3 (docker-compose's deploy job: a plan contract on the local chain) --
FROM base AS demo
COPY --from=demo-build /opt/venv /opt/venv
USER gateway

# --- runtime (the default: the last stage): the gateway and requirements.runtime.lock, nothing else
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
USER gateway
