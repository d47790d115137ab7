# The GPU image every pipeline step runs in: TensorFlow's CUDA image with boneage installed.
# Build and push with `make image REGISTRY=...`; the pipeline's components name the same image.
ARG TF_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${TF_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1

# git: the commit is logged with every run.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.* \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/boneage
# Dependencies first (a layer that changes only with the lock), then the package itself.
# TensorFlow comes from the base image, so no `cpu`/`gpu` extra is asked for.
COPY requirements.lock pyproject.toml README.md ./
COPY src ./src
RUN python3 -m pip install -c requirements.lock . \
 && python3 -c "import boneage, kfp, mlflow, tensorflow as tf; print('boneage image, TF', tf.__version__)"

RUN useradd --create-home --uid 1000 boneage
USER 1000
WORKDIR /home/boneage
ENTRYPOINT []
CMD ["boneage", "--help"]
