"""Register: every trained model becomes a version of ``boneage`` in the MLflow registry; it takes
the alias ``champion`` only if its test MAE beats the current champion's, else ``challenger``. Its
model card (boneage.training.model_card) becomes the version's description and model_card.md."""

from __future__ import annotations

import json
from pathlib import Path

from boneage import tracking
from boneage.config import Params
from boneage.contracts import MODEL_CARD_FILE, write_json_atomic, write_text_atomic
from boneage.errors import BoneageError
from boneage.training.model_card import model_card

CHAMPION, CHALLENGER = "champion", "challenger"


def _champion_mae(client, name: str) -> tuple[str | None, float | None]:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    mae = version.tags.get("test_mae")
    if mae is None and version.run_id:
        mae = client.get_run(version.run_id).data.metrics.get("test_mae")
    return version.version, float(mae) if mae is not None else None


def register(params: Params, model_dir: Path, metrics_path: Path, out_path: Path) -> dict:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run = tracking.read_run_file(Path(model_dir))
    if not Path(metrics_path).is_file():
        raise BoneageError(f"{metrics_path}: no metrics (run `boneage evaluate` first)")
    metrics = json.loads(Path(metrics_path).read_text())
    test_mae = metrics["test"].get("mae")
    if test_mae is None:
        raise BoneageError(f"{metrics_path}: no test MAE; the test split is empty")
    tracking.connect(params)
    client = MlflowClient()
    provenance = tracking.read_provenance(Path(model_dir))
    # The data card the model carries decides (it went through every stage with the data).
    name = params.registered_model_name(provenance.get("dataset_kind"))
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Pediatric bone age (months) from a hand radiograph")
    previous_version, previous_mae = _champion_mae(client, name)
    lineage = {k: v for k, v in client.get_run(run["run_id"]).data.tags.items() if k.startswith(("dvc.", "data.", "git."))}
    version = mlflow.register_model(
        run["model_uri"],
        name,
        tags={
            "run_id": run["run_id"],
            "test_mae": f"{test_mae:.4f}",
            **lineage,
            # What the model learned from, on the version itself (the registry page shows it).
            **tracking.flatten(provenance, "provenance."),
        },
    )
    # Compare at the precision the champion's MAE is stored with (4 decimals): a rerun of the same
    # recipe ties, and a tie does not take the alias.
    wins = previous_mae is None or round(test_mae, 4) < round(previous_mae, 4)
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, version.version)
    card = model_card(provenance, metrics, params.data.age_bands_years, name, version.version)
    client.update_model_version(name, version.version, description=card)  # the registry page shows it
    decision = {
        "model": name,
        "version": int(version.version),
        "alias": alias,
        "test_mae": test_mae,
        "previous_champion_version": int(previous_version) if previous_version else None,
        "previous_champion_test_mae": previous_mae,
        "reason": (
            "no champion yet"
            if previous_mae is None
            else f"test MAE {test_mae:.3f} {'<' if wins else '>='} champion's {previous_mae:.3f}"
        ),
    }
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.set_tags({"registry.version": version.version, "registry.alias": alias, "registry.reason": decision["reason"]})
        if previous_mae is not None:
            mlflow.log_metric("registry_previous_champion_test_mae", previous_mae)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_path.parent / MODEL_CARD_FILE, card)
    write_json_atomic(out_path, decision)
    return decision
