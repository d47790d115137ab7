# The image every pipeline step runs in; one Dockerfile for both variants (see `make image`):
#   CPU: BASE_IMAGE=python:3.11-slim-bookworm, EXTRAS=cpu (or a Debian base made here: `make base-image`)
#   GPU: BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu, EXTRAS="", VENV_FLAGS=--system-site-packages
#        (TensorFlow with CUDA comes from the base image)
# Layers, from the least to the most often changed: CA certificates and the virtual environment,
# the dependencies from the lock, the project's code (a code change rebuilds only that layer), and
# last the lineage labels. No compilers are installed (every pinned dependency ships a wheel) and
# pip keeps no cache.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG EXTRAS=cpu
ARG VENV_FLAGS=""
ENV PATH=/opt/venv/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1

# Extra CA certificates (a corporate proxy's, or a sandbox's): the *.crt files in docker/ca-certificates/
# (`make image CA_CERTS=dir` copies them there) join the system bundle, which pip is told to use.
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates >/dev/null \
 && python3 -m venv ${VENV_FLAGS} /opt/venv \
 && useradd --create-home --uid 1000 boneage

WORKDIR /opt/boneage
COPY requirements.lock pyproject.toml docker/requirements.py ./
RUN python requirements.py "${EXTRAS}" > requirements.txt \
 && python -m pip install -q -c requirements.lock -r requirements.txt

COPY README.md ./
COPY src ./src
RUN python -m pip install -q --no-deps . \
 && python -c "import boneage, kfp, mlflow, tensorflow" \
 && rm -rf build src/*.egg-info

# Lineage: what this image was built from, as labels and as the environment tracking reads
# (there is no .git in the image).
ARG BASE_IMAGE
ARG GIT_COMMIT=unknown
ARG VERSION=unknown
ARG LOCK_SHA256=unknown
LABEL org.opencontainers.image.title="boneage" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.boneage.base-image="${BASE_IMAGE}" \
      io.boneage.extras="${EXTRAS}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.version="${VERSION}" \
      io.boneage.lock-sha256="${LOCK_SHA256}"
ENV BONEAGE_GIT_COMMIT=${GIT_COMMIT} \
    BONEAGE_IMAGE_VERSION=${VERSION} \
    BONEAGE_LOCK_SHA256=${LOCK_SHA256}

USER 1000
WORKDIR /home/boneage
ENTRYPOINT []
CMD ["boneage", "--help"]
