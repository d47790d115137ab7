import pytest

from boneage.config import Params, load_params
from boneage.errors import BoneageError
from tests.conftest import REPO


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


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out |= _leaves(value, dotted + ".") if isinstance(value, dict) and value else {dotted}
    return out


def _model_leaves(model_cls, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    out = set()
    for name, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= _model_leaves(annotation, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


@pytest.mark.parametrize("preset", ["demo", "seed", "rsna-cpu", "rsna-gpu"])
def test_every_preset_is_a_complete_recipe(preset):
    """A preset sets every preprocess, model and train key: a recipe inherits nothing from another."""
    import yaml

    from boneage.config import PRESETS_DIR, RECIPE_SECTIONS

    raw = yaml.safe_load((PRESETS_DIR / f"{preset}.yaml").read_text())
    assert set(raw) == set(RECIPE_SECTIONS)
    expected = {k for k in _model_leaves(Params) if k.split(".")[0] in RECIPE_SECTIONS}
    assert _leaves(raw) == expected


def test_every_key_the_code_reads_is_in_params_yaml_or_the_preset():
    import yaml

    from boneage.config import PRESETS_DIR

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    visible = _leaves(raw) | _leaves(yaml.safe_load((PRESETS_DIR / f"{raw['preset']}.yaml").read_text()))
    hidden = {
        k for k in _model_leaves(Params) if not any(k == v or k.startswith(v + ".") or v.startswith(k + ".") for v in visible)
    }
    assert hidden == set(), f"keys only the code sets: {sorted(hidden)}"


def test_the_real_data_recipe_takes_nothing_from_the_demo():
    params = load_params(REPO / "params.yaml", {"preset": "rsna-cpu", "data.source": "data/raw"})
    demo = load_params(REPO / "params.yaml")
    assert params.train.steps_per_epoch is None and demo.train.steps_per_epoch is not None  # whole passes vs a fixed budget
    assert params.train.augment != demo.train.augment
    assert params.train.budget_minutes == params.train.max_minutes == 60
    assert params.registered_model_name() == "boneage" and demo.registered_model_name() == "boneage-synthetic"


def test_a_key_set_in_params_yaml_overrides_the_preset(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preset: rsna-cpu\ntrain:\n  max_minutes: 5\n")
    params = load_params(path)
    assert params.train.max_minutes == 5 and params.train.budget_minutes == 60  # the rest is the preset's


def test_an_unknown_preset_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preset: rsna\n")
    with pytest.raises(BoneageError, match="rsna-cpu"):
        load_params(path)


def test_committed_data_dvc_points_at_nothing_a_fresh_clone_cannot_fetch():
    """data.dvc may name data/raw only without a hash, unless the repo configures a remote to pull it from."""
    import configparser

    import yaml

    outs = yaml.safe_load((REPO / "data.dvc").read_text())["outs"]
    hashed = [o["path"] for o in outs if {"md5", "etag", "checksum"} & set(o)]
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    remotes = [s for s in config.sections() if s.startswith("'remote")]
    assert not hashed or remotes, f"data.dvc tracks {hashed} with a hash, but no DVC remote is configured"


def test_a_synthetic_dataset_is_recognised_wherever_it_lies(tmp_path):
    """The registered name follows the data: a moved synthetic set (it carries its truth file) still
    registers as synthetic; a real folder registers under the name for real films."""
    from boneage.contracts import SYNTHETIC_TRUTH_FILE

    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / SYNTHETIC_TRUTH_FILE).write_text("id,boneage,male,true_boneage\n")
    (tmp_path / "real").mkdir()
    base = load_params(REPO / "params.yaml")
    moved = base.model_copy(update={"data": base.data.model_copy(update={"source": str(tmp_path / "moved")})})
    real = base.model_copy(update={"data": base.data.model_copy(update={"source": str(tmp_path / "real")})})
    assert moved.registered_model_name() == "boneage-synthetic"
    assert real.registered_model_name() == "boneage"
    assert base.registered_model_name() == "boneage-synthetic"
    # A model's recorded dataset kind outranks what data.source names; "unknown" falls back to it.
    assert real.registered_model_name("synthetic") == "boneage-synthetic"
    assert base.registered_model_name("real") == "boneage"
    assert base.registered_model_name("unknown") == "boneage-synthetic"
