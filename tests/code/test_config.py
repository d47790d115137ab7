from pathlib import Path

import pytest

from boneage.config import Params, load_params
from boneage.errors import BoneageError

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_yaml_loads():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == params.data.synthetic_dir  # the demo never points at real data
    assert params.preprocess.image_size >= 75


def test_bad_value_names_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preprocess:\n  image_size: 20\n")
    with pytest.raises(BoneageError) as err:
        load_params(path)
    assert "preprocess.image_size" in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preprocess:\n  imagesize: 299\n")
    with pytest.raises(BoneageError, match="preprocess.imagesize"):
        load_params(path)


def test_split_fractions_must_leave_training(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  split: {val: 0.5, test: 0.45}\n")
    with pytest.raises(BoneageError, match="too little for training"):
        load_params(path)


def test_invalid_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(BoneageError, match="not valid YAML"):
        load_params(path)


def test_defaults_are_the_documented_real_training_values():
    assert Params().preprocess.image_size == 299
    assert Params().model.weights == "imagenet" and Params().model.backbone == "inception_v3"


def test_dotted_overrides_apply_and_are_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 5\n")
    params = load_params(path, {"train.epochs": 7, "kfp.image": "registry.example.org/b:1"})
    assert params.train.epochs == 7 and params.kfp.image == "registry.example.org/b:1"
    with pytest.raises(BoneageError, match=r"train.epochs"):
        load_params(path, {"train.epochs": 0})
    with pytest.raises(BoneageError, match=r"kfp.imag"):
        load_params(path, {"kfp.imag": "typo"})


def test_params_travel_as_json_text_and_come_back_equal():
    import json

    from boneage.config import parse_params

    params = load_params(REPO / "params.yaml")
    assert parse_params(json.dumps(params.model_dump(mode="json"))) == params
