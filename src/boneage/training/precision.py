"""The arithmetic training runs in, chosen from ``train.mixed_precision`` and the machine, and put
back as it was afterwards (Keras' dtype policy and TensorFlow's graph options are process-wide:
left set, they would leak into whatever runs next in the process).

- ``float16``: Keras' ``mixed_float16`` policy, on a GPU (tensor cores).
- ``bfloat16``: TensorFlow's oneDNN auto mixed precision, on a CPU that does bfloat16 natively
  (AVX512-BF16 or AMX-BF16): the graph's convolutions and matrix products run in bfloat16 while the
  weights, the optimizer and BatchNorm stay float32. On CPUs without it, bfloat16 is emulated and
  slower than float32, so ``auto`` never picks it there.
- ``float32``: everything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from boneage.errors import BoneageError

FLOAT32, FLOAT16, BFLOAT16 = "float32", "float16", "bfloat16"
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ONEDNN_BF16_OPTION = "auto_mixed_precision_onednn_bfloat16"
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return bool((cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))


def choose(mode: str, gpu: bool, native_bf16: bool) -> str:
    """``train.mixed_precision`` (auto, on, off) on this machine -> float32, float16 or bfloat16."""
    if mode == "off":
        return FLOAT32
    if gpu:
        return FLOAT16
    if native_bf16:
        return BFLOAT16
    if mode == "on":
        raise BoneageError(
            "train.mixed_precision: on, but this machine has no GPU and its CPU does no bfloat16 natively "
            f"(none of the CPU flags {', '.join(NATIVE_BF16_FLAGS)}): emulated bfloat16 is slower than float32. "
            "Set train.mixed_precision: auto (float32 here) or off"
        )
    return FLOAT32


@contextlib.contextmanager
def training_precision(mode: str) -> Iterator[str]:
    """Train in the precision ``mode`` chooses here (yielded: float32, float16 or bfloat16); on exit
    the global Keras policy and TensorFlow's oneDNN option are what they were before."""
    import keras
    import tensorflow as tf

    chosen = choose(mode, bool(tf.config.list_physical_devices("GPU")), cpu_has_native_bf16())
    policy = keras.mixed_precision.global_policy().name
    onednn_bf16 = bool(tf.config.optimizer.get_experimental_options().get(ONEDNN_BF16_OPTION, False))
    try:
        if chosen == FLOAT16:
            keras.mixed_precision.set_global_policy("mixed_float16")
        elif chosen == BFLOAT16:
            tf.config.optimizer.set_experimental_options({ONEDNN_BF16_OPTION: True})
        yield chosen
    finally:
        keras.mixed_precision.set_global_policy(policy)
        tf.config.optimizer.set_experimental_options({ONEDNN_BF16_OPTION: onednn_bf16})
