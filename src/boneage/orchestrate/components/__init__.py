"""One Kubeflow component per pipeline step, each a thin wrapper over ``boneage.orchestrate.kfp_steps``.

The functions in this package are lightweight Python components: KFP ships each function's source
into the project's image (where `boneage` is installed) and runs it there. They hold no logic of
their own: they turn KFP artifacts into folders, call the library, and describe the outputs.
"""

import inspect
import typing
from pathlib import Path
from types import SimpleNamespace

from kfp import dsl

from boneage.orchestrate.components.batch_merge import batch_merge
from boneage.orchestrate.components.batch_score import batch_score
from boneage.orchestrate.components.batch_split import batch_split
from boneage.orchestrate.components.ensemble import ensemble
from boneage.orchestrate.components.evaluate import evaluate
from boneage.orchestrate.components.ingest import ingest
from boneage.orchestrate.components.member import member
from boneage.orchestrate.components.preprocess import preprocess
from boneage.orchestrate.components.register import register
from boneage.orchestrate.components.train import train

STEPS = (ingest, preprocess, train, member, ensemble, evaluate, register, batch_split, batch_score, batch_merge)

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


README = Path(__file__).with_name("README.md")


def _kind(annotation) -> tuple[str, str]:
    """("input" or "output", the type's name) of a component parameter's annotation: KFP's
    Input[T] and Output[T] are Annotated[T, InputAnnotation or OutputAnnotation]."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return ("output" if "Output" in args[1].__name__ else "input"), args[0].__name__
    name = getattr(annotation, "__name__", str(annotation))
    return "input", (f"{name}[{args[0].__name__}]" if args and hasattr(args[0], "__name__") else name)


def readme() -> str:
    """This folder's README, written from the components' own signatures and docstrings."""
    lines = [
        "# components",
        "",
        "One Kubeflow component per pipeline step: a lightweight Python component whose source KFP ships",
        "into the project's image, where it calls one function of `boneage.orchestrate.kfp_steps` (the same",
        "library calls as the `boneage` CLI and the DVC stages) and describes its outputs. No step logic lives",
        "here (tests/code/test_kfp_pipeline.py checks that each only imports kfp_steps and has no branches).",
        "`build(gpu_image, cpu_image)` gives the training steps the GPU image and the others the CPU image,",
        "with `install_kfp_package=False`: the images already hold kfp and boneage. This file is written by",
        "`boneage.orchestrate.components.readme()` (a test checks it is current).",
        "",
        "| component | image | inputs | outputs | what it does |",
        "|---|---|---|---|---|",
    ]
    for step in STEPS:
        signature = inspect.signature(step)
        sides: dict[str, list[str]] = {"input": [], "output": []}
        for name, param in signature.parameters.items():
            side, kind = _kind(param.annotation)
            sides[side].append(f"`{name}` ({kind})")
        if signature.return_annotation is not inspect.Signature.empty:
            sides["output"].append(f"returns {getattr(signature.return_annotation, '__name__', signature.return_annotation)}")
        summary = " ".join((inspect.getdoc(step) or "").split("\n\n")[0].split())
        image = "GPU" if step.__name__ in GPU_STEPS else "CPU"
        lines.append(f"| `{step.__name__}` | {image} | {', '.join(sides['input'])} | {', '.join(sides['output'])} | {summary} |")
    return "\n".join(lines) + "\n"
