"""Fitting a model's out-of-distribution check (boneage.model.ood) from its own films: the
scores on the training films, each threshold on the validation films. Run by train and by the
ensemble after training; the check itself knows nothing of datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from boneage.contracts import OOD_FILE
from boneage.data.imaging import DIHEDRAL_VIEWS
from boneage.errors import BoneageError
from boneage.model.network import IMAGE_INPUT
from boneage.model.ood import FitData, OodCheck, fit, image_signature, in_view, pooled, scoring_model, texture_signature
from boneage.training.dataset import make_dataset


def split_fit_data(model: keras.Model, data_dir: Path, split: str, image_size: int, batch_size: int, image_side: int, views: int):
    """(ids and predictions of one split, what fitting an out-of-distribution check needs from it:
    pooled features, texture signatures, and image signatures of the first ``views`` views)."""
    scorer = scoring_model(model)
    rows, features, textures, signatures = [], [], [], [[] for _ in range(views)]
    for inputs, _, ids in make_dataset(data_dir, split, image_size, batch_size, with_ids=True):
        pred, feats = scorer.predict_on_batch(inputs)
        images = inputs[IMAGE_INPUT].numpy()
        features.append(pooled(feats))
        textures.append(texture_signature(images))
        for view in range(views):
            signatures[view].append(image_signature(in_view(images, view), image_side))
        rows.extend(zip([i.decode() for i in ids.numpy()], np.asarray(pred).reshape(-1).tolist(), strict=True))
    data = (
        FitData(np.concatenate(features), np.concatenate(textures), [np.concatenate(s) for s in signatures]) if features else None
    )
    return pd.DataFrame(rows, columns=["id", "predicted"]), data


def fit_for_model(predict_model, data_dir: Path, out_dir: Path, params, val_data: FitData | None = None) -> OodCheck | None:
    """Fit a model's out-of-distribution check (scores fitted on its training films, thresholds on
    its validation films) and write it beside the model; None, and no file, when train.ood is off."""
    import mlflow

    path, cfg = Path(out_dir) / OOD_FILE, params.train.ood
    if not cfg.enabled:
        path.unlink(missing_ok=True)  # a check left by an earlier run would judge another model
        return None
    size, batch = params.preprocess.image_size, params.train.batch_size
    _, train_data = split_fit_data(predict_model, data_dir, "train", size, batch, cfg.image_side, DIHEDRAL_VIEWS)
    if val_data is None:
        _, val_data = split_fit_data(predict_model, data_dir, "val", size, batch, cfg.image_side, 1)
    if train_data is None or val_data is None:
        raise BoneageError(f"{data_dir}: the out-of-distribution check needs training and validation films")
    check = fit(train_data, val_data, cfg)
    check.save(path)
    if mlflow.active_run():
        mlflow.log_metrics({f"ood_threshold_{part}": value for part, value in check.thresholds.items()})
    print(
        f"out-of-distribution check fitted on {check.train_films} training films, thresholds at the "
        f"{cfg.quantile} quantile of {check.val_films} validation films",
        file=sys.stderr,
    )
    return check
