# styletx server image: multi-stage, CPU (default) and CUDA targets, non-root, no compilers, no pip settings.
#
#   CPU   DOCKER_BUILDKIT=1 docker build --network host -t styletx:cpu .
#   CUDA  DOCKER_BUILDKIT=1 docker build --network host --target cuda -t styletx:cuda .
#         (PyPI's torch is a CUDA build; TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 picks another CUDA,
#          .../whl/cpu a CPU-only torch for a much smaller CPU image.)
#
# Package-index settings come in as build args named after pip's variables (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS, PIP_TRUSTED_HOST) and the CA bundle / constraints file as BuildKit secrets
# (--secret id=pip_cert,src=... --secret id=pip_constraint,src=...). They are used in the builder stage only;
# the final stages never see them. deploy/test-image.sh derives all of them from `pip config list`.
# No `# syntax=` line on purpose: the frontend image cannot be pulled offline, and the Dockerfile frontend built
# into dockerd >= 20.10 already supports RUN --mount=type=secret|cache.
# Docs: docs/deploy.md ("Container image").

# A Debian/Ubuntu-like image with python3 (>= 3.11: tomllib), python3-venv and ca-certificates. Registries are
# unreachable here, so deploy/test-image.sh makes styletx-base:bookworm with debootstrap + docker import.
ARG BASE_IMAGE=styletx-base:bookworm

FROM ${BASE_IMAGE} AS base
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SHELL ["/bin/sh", "-eu", "-c"]

# ---------------------------------------------------------------------------------------------------- builders
# requirements: the third-party requirements of both distributions, from pyproject.toml and client/pyproject.toml.
# deps: those packages in /opt/venv; rebuilt only when the requirements change (not on source edits).
# app: the styletx package in /opt/styletx/app (on PYTHONPATH) plus the weights, so that a source edit rebuilds
# and copies megabytes, not the multi-GB venv.
FROM base AS requirements
WORKDIR /src
COPY deploy/docker-install.sh /usr/local/bin/styletx-docker-install
COPY pyproject.toml ./
COPY client/pyproject.toml client/
RUN styletx-docker-install requirements

FROM base AS deps
# Named like pip's own settings so that pip picks them up from the RUN environment; empty = pip's default.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_DEFAULT_TIMEOUT=180
# A torch wheel index (https://download.pytorch.org/whl/cpu or .../cu128); empty = the regular index, whose
# default torch wheel is a CUDA build that also runs on CPU (it brings ≈ 4 GB of CUDA libraries).
ARG TORCH_INDEX_URL=""
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY deploy/docker-install.sh /usr/local/bin/styletx-docker-install
COPY --from=requirements /src/requirements.txt ./
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_constraint \
    --mount=type=cache,target=/root/.cache/pip \
    styletx-docker-install deps

FROM deps AS deps-cuda
# ARGs end with their stage: the index settings are declared again for this one.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_DEFAULT_TIMEOUT=180
# onnxruntime and onnxruntime-gpu provide the same module, so the CPU wheel is swapped out, not added to.
ARG ONNXRUNTIME_PACKAGE=onnxruntime-gpu
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_constraint \
    --mount=type=cache,target=/root/.cache/pip \
    styletx-docker-install onnxruntime

FROM deps AS app
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_DEFAULT_TIMEOUT=180
ENV PYTHONPATH=/opt/styletx/app \
    STYLETX_CACHE=/opt/styletx/weights
COPY . .
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_constraint \
    --mount=type=cache,target=/root/.cache/pip \
    styletx-docker-install app
# The cache (weights, networks, ONNX export) prepared at build time (FETCH_WEIGHTS=1, the default) or mounted at
# /opt/styletx/weights at run time (FETCH_WEIGHTS=0: a PVC or the chart's init container; see docs/deploy.md).
ARG FETCH_WEIGHTS=1
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_constraint \
    --mount=type=cache,target=/root/.cache/pip \
    styletx-docker-install weights

# ---------------------------------------------------------------------------------------------------- runtime
FROM base AS runtime
# Numeric (USER 10001 below) so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 10001 styletx \
    && useradd --uid 10001 --gid 10001 --home-dir /home/styletx --create-home \
       --shell /usr/sbin/nologin styletx
# Everything the server may write goes to /tmp (an emptyDir / tmpfs under readOnlyRootFilesystem).
ENV HOME=/home/styletx \
    PATH=/opt/styletx/app/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/styletx/app \
    STYLETX_CACHE=/opt/styletx/weights \
    STYLETX_PORT=50051 \
    STYLETX_METRICS_PORT=9464 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TMPDIR=/tmp
EXPOSE 50051 9464
LABEL org.opencontainers.image.title="styletx" \
      org.opencontainers.image.description="Neural style transfer gRPC server (styletx-server)" \
      org.opencontainers.image.licenses="MIT"
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["styletx-healthcheck", "--quiet"]
ENTRYPOINT ["styletx-server"]

FROM runtime AS cuda
# Read by the NVIDIA container runtime: expose the GPUs and the compute libraries (the driver is the host's).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=deps-cuda /opt/venv /opt/venv
COPY --from=app /opt/styletx /opt/styletx
# Small and often edited: after the large layers, so that an edit does not copy the venv again.
COPY --chmod=0755 deploy/grpc_health_probe.py /usr/local/bin/styletx-healthcheck
COPY --chmod=0755 deploy/smoke_client.py /usr/local/bin/styletx-smoke
COPY --chmod=0755 deploy/prepare_cache.py /usr/local/bin/styletx-prepare-cache
USER 10001:10001

# The last stage is the default target: the CPU image.
FROM runtime AS cpu
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/styletx /opt/styletx
COPY --chmod=0755 deploy/grpc_health_probe.py /usr/local/bin/styletx-healthcheck
COPY --chmod=0755 deploy/smoke_client.py /usr/local/bin/styletx-smoke
COPY --chmod=0755 deploy/prepare_cache.py /usr/local/bin/styletx-prepare-cache
USER 10001:10001
