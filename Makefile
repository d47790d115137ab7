# boneage: every command a user or CI runs. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Optional parts of the install: `make setup EXTRAS=gpu,services,dev` in a fresh clone on a machine
# with an NVIDIA GPU (the cpu and gpu builds of TensorFlow do not share one environment).
EXTRAS ?= cpu,services,dev
STAMP := $(VENV)/.installed.$(EXTRAS)
# Debian packages the project needs beyond a stock Python image (installed only when missing).
# git: DVC and the run's commit; postgresql: the MLflow server's store (make services);
# chromium: the browser test of the MLflow UI.
APT_PACKAGES := git postgresql chromium

# DVC stages call `boneage`; run them with the project's environment first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
MLFLOW_PORT ?= 5000

# The images the Kubeflow steps run in. `make push` pushes exactly the names `make compile` bakes
# into the pipeline; the defaults match params.yaml's kfp.image and kfp.cpu_image.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY ?= ghcr.io/boneage
IMAGE ?= $(REGISTRY)/boneage-gpu:$(VERSION)
IMAGE_CPU ?= $(REGISTRY)/boneage-cpu:$(VERSION)
PIPELINE_YAML ?= build/boneage-pipeline.yaml

.PHONY: setup system-deps python-venv envs test test-fast demo demo-ensemble demo-next pipeline real-data bench-real bench-demo bench-ood bench-ensemble plots bench bench-gpu mlflow-ui serve serve-env serve-kserve image-serve lint clean help services services-down image lint-docker compile kfp-local submit docker-ready base-image ca-certificates image-gpu push test-containers image-local

help:
	@echo "make setup   install system packages and the pinned Python environment in $(VENV)"
	@echo "make test    run the whole test suite (slow end-to-end tests included)"
	@echo "make demo    install, then run the whole pipeline on the embedded synthetic dataset"
	@echo "make demo-ensemble   then an ensemble of 3 members on the same data (after make demo)"
	@echo "make real-data SOURCE=...   the pipeline on real RSNA films with the recipe of record (rsna-cpu)"
	@echo "make bench   speed and memory benchmarks -> benchmarks/results.{json,md} and the README"
	@echo "make bench-demo   the demo over 3 seeds -> the README's demo figures"
	@echo "make bench-ensemble SOURCE=...   ensembles on real films and their serving latency"
	@echo "make bench-gpu   training images/s on an NVIDIA GPU (benchmarks/gpu.sh)"
	@echo "make mlflow-ui / make plots   look at the runs and the DVC plots"
	@echo "make serve [MODEL=models:/NAME@champion] [PORT=5002]   the registered model as a REST endpoint"
	@echo "make serve-kserve [KSERVE_MODEL=models] [KSERVE_PORT=8080]   the model behind KServe's server (V1 + V2)"
	@echo "make image-serve   the KServe serving image (make image-serve BASE_IMAGE=... as for make image)"
	@echo "make image [BASE_IMAGE=...]   build the CPU image (make base-image: a Debian base made here, offline)"
	@echo "make image-gpu / make push REGISTRY=...   build the GPU image / build both and push them"
	@echo "make test-containers   the Kubeflow pipeline with every step in the CPU image (Docker)"
	@echo "make compile REGISTRY=... / make submit KFP_HOST=...   the Kubeflow pipeline on a cluster"
	@echo "make kfp-local   the Kubeflow pipeline here, with kfp.local"
	@echo "make services / make services-down   PostgreSQL, a GCS emulator and an MLflow server on 127.0.0.1"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Debian splits venv (and the pip it bootstraps) out of the interpreter: python3.11-venv.
python-venv: system-deps
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3.12"; exit 1; }
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { \
	  pkg=$$(basename $(PYTHON))-venv; echo "installing Debian package: $$pkg"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$pkg; }

# pip without byte-compiling every module it installs: Python compiles (and caches) the ones a
# process imports, a fraction of TensorFlow's and MLflow's files.
PIP_INSTALL = python -m pip install -q --no-compile

# Reinstalls only when the pins change. requirements.lock pins the whole tree; pyproject.toml the direct deps.
$(STAMP): pyproject.toml requirements.lock | python-venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/$(PIP_INSTALL) -c requirements.lock -e '.[$(EXTRAS)]'
	touch $(STAMP)

setup: system-deps $(STAMP)

# KServe's model server cannot share the pinned stack (requirements-serve.txt says why): its own
# environment, from its own lock, with boneage installed into it without dependencies.
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
$(SERVE_STAMP): requirements-serve.lock pyproject.toml | python-venv
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/$(PIP_INSTALL) -r requirements-serve.lock
	$(SERVE_VENV)/bin/$(PIP_INSTALL) --no-deps -e .
	touch $(SERVE_STAMP)

serve-env: $(SERVE_STAMP)

# PYTEST_MARKERS picks the tests: all but the container ones by default; .ci/run adds those, in the
# same session, so that they reuse its service stack and its `dvc repro` (make ci-tests).
PYTEST_MARKERS ?= not containers
# make test: two pytest-xdist workers; half the suite waits on processes, servers and files, not on the CPU.
# A module runs whole on one worker (its fixtures are built once); the longest start first
# (tests/conftest.py). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder
# The two environments install side by side: each pip is mostly one core's work.
envs:
	$(MAKE) --no-print-directory -j2 setup serve-env
test: envs lint
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "$(PYTEST_MARKERS)"

# ruff: lint and format check over the whole codebase (pyproject.toml [tool.ruff]).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One process: two workers measured no faster here (74 s, against 58-84 s in one, 2026-12-01/02).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not containers"

# The whole pipeline on whatever params.yaml says (as committed: the embedded synthetic dataset):
# synth, ingest, preprocess, train, evaluate, register. The ensemble of its members: make demo-ensemble.
demo: setup
	@start=$$(date +%s); \
	dvc repro register && \
	echo && echo "== Test metrics (months) ==" && boneage report --metrics reports/metrics.json && \
	echo && boneage report --registry reports/registry.json && \
	echo "pipeline wall time: $$(( $$(date +%s) - start )) s" && $(MAKE) -s demo-next

demo-ensemble: setup
	@start=$$(date +%s); \
	dvc repro register_ensemble && \
	echo && echo "== Test metrics (months), the ensemble of its members ==" && boneage report --metrics reports/ensemble/metrics.json && \
	echo && boneage report --registry reports/ensemble/registry.json && \
	echo "ensemble wall time: $$(( $$(date +%s) - start )) s" && $(MAKE) -s demo-next

demo-next:
	@echo
	@echo "What was made: data/synthetic/ (the films; contact sheet: data/preprocessed/contact_sheet.png),"
	@echo "  models/ (model.keras, predictor.json, ood.npz, training_curve.png), reports/ (metrics.json, plots)."
	@echo "Next: make mlflow-ui, then open http://127.0.0.1:$(MLFLOW_PORT) (the run, its curves and plots, the registered model);"
	@echo "  make plots, then open dvc_plots/render/index.html; boneage predict FILM.png --sex F --model models"

pipeline: setup
	dvc repro

# Real RSNA films through the same DVC stages, with the recipe of record (preset rsna-cpu):
#   make real-data SOURCE=path/to/kaggle-folder   (or rsna-bone-age.zip, or gs://bucket/prefix)
# It runs as a DVC experiment (`dvc exp show` lists it), leaves the model in models/ and the
# metrics in reports/metrics.json, registers under mlflow.registered_model, and leaves params.yaml
# as it was. REAL_PRESET=rsna-gpu on a GPU node; REAL_SET="-S ++train.max_minutes=5" for a quick try
# (++: the preset's keys are not in params.yaml, and DVC adds one only with ++).
REAL_PRESET ?= rsna-cpu
REAL_SET ?=
real-data: setup
	@test -n "$(SOURCE)" || { echo "error: name the dataset: make real-data SOURCE=path/to/kaggle-folder (or a .zip, or gs://bucket/prefix)"; exit 1; }
	@start=$$(date +%s); cp params.yaml .params.yaml.real-data; \
	dvc exp run register -S preset=$(REAL_PRESET) -S 'data.source=$(SOURCE)' $(REAL_SET); status=$$?; \
	mv .params.yaml.real-data params.yaml; \
	[ $$status = 0 ] || exit $$status; \
	echo && echo "== Test metrics on real films (months) ==" && boneage report --metrics reports/metrics.json && \
	echo && cat reports/registry.json && \
	echo && echo "pipeline wall time: $$(( $$(date +%s) - start )) s"

plots: setup
	dvc plots show --out dvc_plots/render

# Speed measurements; results land in benchmarks/results.json and benchmarks/results.md (shown in the README).
# About 25 minutes on 2 cores; the real-film benchmarks read ../shared/data/rsna-sample.
# BENCH_REPEATS=N repeats each measurement N times (default 3) and reports the median.
BENCHMARKS := bench_synth bench_preprocess bench_input_pipeline bench_memory bench_inference bench_orchestration bench_tracking
bench: setup
	@set -e; for b in $(BENCHMARKS); do echo "== $$b"; $(BIN)/python -m benchmarks.$$b; done
	@cat benchmarks/results.md

# Real-film accuracy and crop quality (not in CI: about 2.5 hours on 2 cores): the crop against
# people's hand boxes, `make real-data` with the recipe of record, then its variants (no sex, the
# first crop, the seed preset) under an equal shorter budget; SAMPLES=../shared/data/rsna-sample adds
# the crop on the full-resolution samples whose hands tests/fixtures marks. Figures -> benchmarks/results.json and
# the README's "Real data" section.
bench-real: setup
	@test -n "$(SOURCE)" || { echo "error: name the dataset: make bench-real SOURCE=path/to/kaggle-folder"; exit 1; }
	$(BIN)/python -m benchmarks.bench_real crop --source $(SOURCE) $(if $(SAMPLES),--samples $(SAMPLES))
	$(MAKE) real-data SOURCE=$(SOURCE)
	$(BIN)/python -m benchmarks.bench_real recipe --workspace .
	$(BIN)/python -m benchmarks.bench_real variants --source $(SOURCE)
	$(MAKE) bench-ood SOURCE=$(SOURCE) WORKSPACE=.
	$(MAKE) bench-ensemble SOURCE=$(SOURCE)

# Ensembles on real films under bench_real's budget (single vs 3 thirds vs 3 full members, TTA off
# and on; reuses bench_real's "recipe" run; about 80 minutes on 2 cores) and the ensemble pyfunc's
# latency -> benchmarks/results.json ("ensemble") and the README's "Ensembles" block.
bench-ensemble: setup
	@test -n "$(SOURCE)" || { echo "error: name the dataset: make bench-ensemble SOURCE=path/to/kaggle-folder"; exit 1; }
	$(BIN)/python -m benchmarks.bench_ensemble real --source $(SOURCE)
	$(BIN)/python -m benchmarks.bench_ensemble latency

# What the out-of-distribution check refuses and the interval's coverage, on the model of a finished
# `make real-data` WORKSPACE and the demo model `make bench-demo` leaves (benchmarks/bench_ood.py).
WORKSPACE ?= .
bench-ood: setup
	@test -n "$(SOURCE)" || { echo "error: name the dataset: make bench-ood SOURCE=path/to/kaggle-folder [WORKSPACE=.]"; exit 1; }
	$(BIN)/python -m benchmarks.bench_ood run --workspace $(WORKSPACE) --source $(SOURCE)

# The README's demo figures: the demo recipe over 3 seeds through the library (about 40 minutes on
# 2 cores) -> benchmarks/results.json ("demo") and the README's "Demo results" block.
bench-demo: setup
	$(BIN)/python -m benchmarks.bench_demo run

# The GPU recipe on an NVIDIA GPU: images/s at 299, 384 and 512 px (float32 and mixed precision)
# and a short rsna-gpu run on SOURCE's real films (benchmarks/gpu.sh), the one script for a lent GPU.
bench-gpu:
	@$(BIN)/python -c "import tensorflow as tf, sys; sys.exit(not tf.config.list_physical_devices('GPU'))" 2>/dev/null || \
	  { echo "error: TensorFlow sees no GPU here; on a GPU machine: make setup EXTRAS=gpu,services,dev (fresh clone)"; exit 1; }
	SOURCE=$(or $(SOURCE),../shared/data/rsna-100px) benchmarks/gpu.sh

# The images (one Dockerfile): the CPU image for every step but training, the GPU image for training.
# BASE_IMAGE: python:3.11-slim-bookworm where a registry is reachable, or the Debian base made here
# (make base-image; then make image BASE_IMAGE=$(LOCAL_BASE)). CA_CERTS: a folder of extra *.crt files
# the build must trust (a corporate proxy's).
BASE_IMAGE ?= python:3.11-slim-bookworm
GPU_BASE_IMAGE ?= tensorflow/tensorflow:2.21.0-gpu
LOCAL_BASE := boneage-base:bookworm
CA_CERTS ?=
GIT_COMMIT = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- src pyproject.toml requirements.lock Dockerfile 2>/dev/null || echo -dirty)
LOCK_SHA256 = $(shell sha256sum requirements.lock | cut -c1-64)
BUILD_ARGS = --build-arg GIT_COMMIT=$(GIT_COMMIT) --build-arg VERSION=$(VERSION) --build-arg LOCK_SHA256=$(LOCK_SHA256)

docker-ready:
	@docker/ensure-docker.sh

base-image: docker-ready
	docker/base-image.sh $(LOCAL_BASE)

ca-certificates:
	@rm -f docker/ca-certificates/*.crt
	@if [ -n "$(CA_CERTS)" ]; then cp $(CA_CERTS)/*.crt docker/ca-certificates/ && echo "extra CA certificates: $$(ls docker/ca-certificates/*.crt | wc -l) from $(CA_CERTS)"; fi

image: docker-ready ca-certificates
	DOCKER_BUILDKIT=0 docker build -q --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg EXTRAS=cpu $(BUILD_ARGS) -t $(IMAGE_CPU) .
	@docker image ls $(IMAGE_CPU) --format '{{.Repository}}:{{.Tag}} {{.Size}}'

# The serving image: KServe's server over boneage, from requirements-serve.lock (docker/serve.Dockerfile).
IMAGE_SERVE ?= $(REGISTRY)/boneage-serve:$(VERSION)
image-serve: docker-ready ca-certificates
	DOCKER_BUILDKIT=0 docker build -q -f docker/serve.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) $(BUILD_ARGS) -t $(IMAGE_SERVE) .
	@docker image ls $(IMAGE_SERVE) --format '{{.Repository}}:{{.Tag}} {{.Size}}'

image-gpu: docker-ready ca-certificates
	DOCKER_BUILDKIT=0 docker build -q --build-arg BASE_IMAGE=$(GPU_BASE_IMAGE) --build-arg EXTRAS= \
	  --build-arg VENV_FLAGS=--system-site-packages $(BUILD_ARGS) -t $(IMAGE) .

push: image image-gpu
	docker push $(IMAGE_CPU)
	docker push $(IMAGE)

# The whole Kubeflow pipeline with every step in the CPU image (kfp.local's DockerRunner), against
# the service stack; installs Docker from Debian and builds the local base and the image if needed.
test-containers: image-local
	$(BIN)/python -m pytest -m containers tests/test_pipelines.py

# The CPU image, from the Debian base made here (Docker installed and started if needed).
image-local: setup docker-ready
	$(MAKE) base-image
	$(MAKE) image BASE_IMAGE=$(LOCAL_BASE) CA_CERTS=$(or $(CA_CERTS),$(wildcard /usr/local/share/ca-certificates))

lint-docker: setup
	$(BIN)/hadolint Dockerfile docker/serve.Dockerfile

compile: setup
	boneage pipeline compile --out $(PIPELINE_YAML) --set kfp.image=$(IMAGE) --set kfp.cpu_image=$(IMAGE_CPU)

kfp-local: setup
	boneage pipeline run-local

submit: compile
	@test -n "$(KFP_HOST)" || { echo "error: set KFP_HOST, e.g. make submit KFP_HOST=https://kubeflow.example.org/pipeline"; exit 1; }
	boneage pipeline submit --host $(KFP_HOST) --package $(PIPELINE_YAML)

# PostgreSQL + GCS emulator + MLflow server (basic auth) on 127.0.0.1; then
#   eval "$$(boneage services env)"   and every step logs to the server and the bucket.
services: setup
	boneage services up

services-down: setup
	boneage services down

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# The registered model behind a REST endpoint (POST /invocations), from the project's environment
# (mlflow's server needs uvicorn from .venv/bin on PATH). After `make demo` the champion is
# models:/boneage-synthetic@champion; real-data models register as boneage.
MODEL ?= models:/boneage@champion
PORT ?= 5002
MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
serve: setup
	MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI) mlflow models serve -m $(MODEL) --env-manager local -h 127.0.0.1 -p $(PORT)

# The model behind KServe's own server (V1 and Open Inference protocols) on 127.0.0.1:$(KSERVE_PORT).
# MODEL: a training output folder (default: the demo's), or an MLflow model URI, fetched first.
# RECORDS: a folder (or gs://) where every scored film leaves a record for `boneage monitor`.
KSERVE_MODEL ?= models
KSERVE_PORT ?= 8080
RECORDS ?= reports/records
serve-kserve: setup serve-env
	@dir="$(KSERVE_MODEL)"; case "$$dir" in *:/*) dir=$$(MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI) $(BIN)/python -c \
	  "import sys; from boneage.serve.predict import model_folder; print(model_folder(sys.argv[1]))" "$$dir") || exit 1;; esac; \
	BONEAGE_RECORDS=$(RECORDS) $(SERVE_VENV)/bin/python -m boneage.serve.kserve_model --model_dir "$$dir" \
	  --model_name boneage --http_port $(KSERVE_PORT)

clean:
	rm -rf data/ingest data/preprocessed models reports local_outputs .pytest_cache
