"""The precision training runs in: chosen from train.mixed_precision and the machine, and always
put back (Keras' dtype policy and TensorFlow's graph options are process-wide)."""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf

from boneage.errors import BoneageError
from boneage.training import precision


@pytest.mark.parametrize(
    ("mode", "gpu", "bf16", "expected"),
    [
        ("auto", True, False, "float16"),
        ("auto", False, True, "bfloat16"),
        ("auto", False, False, "float32"),
        ("off", True, True, "float32"),
        ("on", False, True, "bfloat16"),
    ],
)
def test_the_precision_follows_the_machine(mode, gpu, bf16, expected):
    assert precision.choose(mode, gpu, bf16) == expected


def test_on_without_fast_low_precision_is_an_error_not_a_slow_run():
    with pytest.raises(BoneageError, match="no bfloat16 natively"):
        precision.choose("on", gpu=False, native_bf16=False)


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert precision.cpu_has_native_bf16(precision.cpu_flags(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert not precision.cpu_has_native_bf16(precision.cpu_flags(cpuinfo))


@pytest.mark.parametrize(("gpu", "bf16"), [(True, False), (False, True)])
def test_the_precision_is_put_back_even_when_training_fails(monkeypatch, gpu, bf16):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if gpu and kind == "GPU" else [])
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda flags=None: bf16)
    with pytest.raises(RuntimeError), precision.training_precision("auto") as chosen:
        assert keras.mixed_precision.global_policy().name == ("mixed_float16" if gpu else "float32")
        assert tf.config.optimizer.get_experimental_options().get(precision.ONEDNN_BF16_OPTION, False) == bf16
        raise RuntimeError("training failed")
    assert chosen == ("float16" if gpu else "bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert not tf.config.optimizer.get_experimental_options().get(precision.ONEDNN_BF16_OPTION, False)
