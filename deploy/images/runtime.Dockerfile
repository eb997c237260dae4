# syntax=docker/dockerfile:1
# The one runtime image of every stage: `botburrow ingest|scheduler|runner|metrics|configsync`.
# Build from the repository root:
#   docker build -f deploy/images/runtime.Dockerfile -t botburrow-runtime:0.1.0 .
# Network at build time: the base image registry and PyPI only. Every Python dependency is pinned
# by deploy/images/constraints.txt (the full closure, not just the direct dependencies).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY botburrow ./botburrow
COPY schemas ./schemas
COPY streams ./streams
COPY services ./services
COPY deploy/images/constraints.txt /tmp/constraints.txt
# Build our wheel without dependencies, then every dependency wheel at its pinned version.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels -c /tmp/constraints.txt /wheels/botburrow_agents-*.whl

FROM ${PYTHON_IMAGE}
ARG UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
COPY deploy/images/constraints.txt /tmp/constraints.txt
# --no-index: the install step sees only the wheels built above, so nothing unpinned slips in.
RUN pip install --no-cache-dir --no-index --find-links /wheels -c /tmp/constraints.txt botburrow-agents \
 && rm -rf /wheels /tmp/constraints.txt \
 && useradd --uid "${UID}" --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin botburrow
# A numeric USER lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["botburrow"]
CMD ["--help"]
