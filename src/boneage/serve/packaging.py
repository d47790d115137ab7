"""How a trained model goes to MLflow: the Keras model itself, and the pyfunc that the registry
serves (raw image bytes in, months with an interval out), logged as code with its artifacts.
Shared by train (one model) and ensemble (one model over its members)."""

from __future__ import annotations

from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from boneage.contracts import MODEL_FILE, MONITOR_REFERENCE_FILE, OOD_FILE, PREDICTOR_FILE


def boneage_version() -> str:
    return version("boneage")


def log_scoring_model(predict_model, out_dir: Path, size: int, provenance: dict) -> str:
    """Log ``predict_model`` (Keras) and the pyfunc over ``out_dir``'s model, predictor.json and
    out-of-distribution check to the active run; the pyfunc's URI (what register registers)."""
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from boneage.serve.scoring import SIGNATURE

    out_dir = Path(out_dir)
    signature = ModelSignature(
        inputs=Schema(
            [TensorSpec(np.dtype("uint8"), (-1, size, size, 1), "image"), TensorSpec(np.dtype("float32"), (-1, 1), "male")]
        ),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1), "boneage")]),
    )
    # Known trap: input_example crashes mlflow.keras.log_model in 3.17; the signature says it all.
    # Naming the requirements spares MLflow a subprocess that re-imports TensorFlow to infer them.
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
    mlflow.keras.log_model(predict_model, name="keras_model", signature=signature, pip_requirements=requirements)
    # The registered model: a pyfunc that takes raw image bytes and does its own preprocessing
    # (boneage.serve.serving, logged as code: nothing is pickled).
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=find_spec("boneage.serve.serving").origin,
        signature=SIGNATURE,
        artifacts={
            "keras_model": str(out_dir / MODEL_FILE),
            "predictor_config": str(out_dir / PREDICTOR_FILE),
            **({"ood_check": str(out_dir / OOD_FILE)} if (out_dir / OOD_FILE).is_file() else {}),
            **(
                {"monitor_reference": str(out_dir / MONITOR_REFERENCE_FILE)}
                if (out_dir / MONITOR_REFERENCE_FILE).is_file()
                else {}
            ),
        },
        pip_requirements=[*requirements, f"boneage=={boneage_version()}"],
        metadata={"boneage_provenance": provenance},  # travels with the model to serving and the cluster
    ).model_uri
