# The gateway (and, with another command, the example plugin) as a container image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Run-time packages only (requirements.lock also holds the test stack: pytest, playwright, httpbin...).
COPY requirements.runtime.lock ./
RUN pip install -r requirements.runtime.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY examples ./examples
COPY config ./config
COPY chain/artifacts ./chain/artifacts
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app gateway \
    && mkdir -p /var/lib/gateway && chown gateway /var/lib/gateway

USER gateway
ENV GATEWAY_STATE_DIR=/var/lib/gateway GATEWAY_LISTEN=0.0.0.0:8080 GATEWAY_ADMIN_LISTEN=0.0.0.0:9090
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "config/gateway.yaml"]
