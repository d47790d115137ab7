"""Check an InferenceService manifest against KServe's own Python SDK (run in the serving environment,
.venv-serve, where the kserve package lives): every field must be one the SDK's generated model types
know (V1beta1InferenceService, down through Kubernetes' V1Container and friends), with a value of the
type they declare. A misspelt field, one at the wrong level, or a value of the wrong type fails.
Exit status 0: valid; 1: each problem printed with its path in the document.

    .venv-serve/bin/python tests/serve/kserve_schema.py build/inferenceservice.yaml
"""

import re
import sys

import kserve.models
import kubernetes.client.models
import yaml

PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}


def _model(name: str):
    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(name)


def check(value, kind: str, path: str, problems: list[str]) -> None:
    """Append to ``problems`` every way ``value`` does not fit the SDK type ``kind``."""
    kind = re.sub(r"^Optional\[(.*)\]$", r"\1", kind)
    listed = re.match(r"^(?:list|List)\[(.*)\]$", kind)
    mapped = re.match(r"^(?:dict\(str, (.*)\)|Dict\[str, (.*)\])$", kind)
    if listed or mapped:
        inner = listed.group(1) if listed else (mapped.group(1) or mapped.group(2))
        want = list if listed else dict
        if not isinstance(value, want):
            problems.append(f"{path}: expected a {want.__name__}, got {value!r}")
            return
        for key, item in enumerate(value) if listed else value.items():
            check(item, inner, f"{path}[{key!r}]", problems)
    elif kind in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[kind]) or (kind == "int" and isinstance(value, bool)):
            problems.append(f"{path}: expected {kind}, got {value!r}")
    else:
        _check_model(value, _model(kind), path, problems)


def _check_model(value, model, path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({model.__name__}), got {value!r}")
        return
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key}: not a field of {model.__name__}")
        else:
            check(item, model.openapi_types[fields[key]], f"{path}.{key}", problems)


def main(path: str) -> int:
    with open(path) as fh:
        document = yaml.safe_load(fh)
    problems: list[str] = []
    check(document, "V1beta1InferenceService", "$", problems)
    if document.get("apiVersion") != "serving.kserve.io/v1beta1" or document.get("kind") != "InferenceService":
        problems.append("$: not a serving.kserve.io/v1beta1 InferenceService")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
