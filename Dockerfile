# One image for the three services; compose picks the service with `command:`
# (python -m inventory_svc | analytics_svc | notify_svc), and the one-shot migrators
# (python -m inventory_svc.migrate | notify_svc.migrate).
# Build context: the repository root, trimmed by .dockerignore.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a virtualenv with the runtime dependencies and the project ------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, from the runtime lock alone (`make lock`: every package
# pinned, with hashes, no dev extras): this layer is rebuilt only when the pins
# change, not on every code edit, and installs exactly what the tests ran with.
COPY requirements.runtime.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.runtime.lock

# Then the project itself (services, shared runtime, generated contracts); its
# dependencies are already there.
COPY pyproject.toml README.md ./
COPY meshkit/ meshkit/
COPY inventory_svc/ inventory_svc/
COPY analytics_svc/ analytics_svc/
COPY notify_svc/ notify_svc/
COPY gen/python/ gen/python/
RUN pip install --no-cache-dir --no-deps .

# --- runtime: the virtualenv only, as an unprivileged user -----------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    GRPC_HOST=0.0.0.0
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mesh
COPY --from=build /opt/venv /opt/venv
# The docs site (built by `make docs`), for Envoy on Kubernetes: too big for a
# ConfigMap, so Envoy's pod copies it from this image (deploy/k8s/base/envoy-gateway.yaml).
COPY docs/site/ /opt/polyglotmicro/docs/
USER 10001
EXPOSE 50051 50052 50053
# GRPC_PORT (set per service) tells the probe where to ask.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "meshkit.healthcheck"]
CMD ["python", "-m", "inventory_svc"]
