"""One Kubeflow component per pipeline step, each a thin wrapper over ``boneage.kfp_steps``.

The functions in this package are lightweight Python components: KFP ships each function's source
into the project's image (where `boneage` is installed) and runs it there. They hold no logic of
their own: they turn KFP artifacts into folders, call the library, and describe the outputs.
"""

from types import SimpleNamespace

from kfp import dsl

from components.ensemble import ensemble
from components.evaluate import evaluate
from components.ingest import ingest
from components.member import member
from components.preprocess import preprocess
from components.register import register
from components.train import train

STEPS = (ingest, preprocess, train, member, ensemble, evaluate, register)

# The steps that train: the GPU image, and the GPU request (pipeline.pipeline).
GPU_STEPS = ("train", "member")


def build(gpu_image: str, cpu_image: str) -> SimpleNamespace:
    """The components: training in ``gpu_image``, the others in ``cpu_image``. The images already
    hold kfp and boneage, so nothing is pip-installed when a pod starts (clusters need not reach PyPI)."""
    return SimpleNamespace(
        **{
            step.__name__: dsl.component(
                step, base_image=gpu_image if step.__name__ in GPU_STEPS else cpu_image, install_kfp_package=False
            )
            for step in STEPS
        }
    )
