# The KServe serving image: KServe's own Python server over boneage's scoring path
# (boneage.serve.kserve_model), from requirements-serve.lock. kserve cannot share the pinned stack of
# the pipeline's images (requirements-serve.txt says why), so it gets this image of its own.
#   make image-serve [BASE_IMAGE=...]   (the same bases as `make image`)
# KServe's storage initializer puts the registered version's files in /mnt/models; the InferenceService
# `boneage serve manifest` writes runs this image with --model_name and --http_port.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1

COPY docker/ca-certificates/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates >/dev/null \
 && python3 -m venv /opt/venv \
 && useradd --create-home --uid 1000 boneage

WORKDIR /opt/boneage
COPY requirements-serve.lock ./
RUN python -m pip install -q -r requirements-serve.lock

COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install -q --no-deps . \
 && python -c "import boneage.serve.kserve_model" \
 && rm -rf build src/*.egg-info

ARG BASE_IMAGE
ARG GIT_COMMIT=unknown
ARG VERSION=unknown
LABEL org.opencontainers.image.title="boneage-serve" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.version="${VERSION}"
ENV BONEAGE_GIT_COMMIT=${GIT_COMMIT} \
    BONEAGE_IMAGE_VERSION=${VERSION}

USER 1000
WORKDIR /home/boneage
EXPOSE 8080
ENTRYPOINT ["python", "-m", "boneage.serve.kserve_model"]
CMD ["--model_dir=/mnt/models", "--model_name=boneage", "--http_port=8080"]
