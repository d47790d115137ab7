"""Print the project's direct requirements (pyproject.toml's dependencies and the named extras, one
per line) for the image's dependency layer: installed against requirements.lock before the
project's code is copied, so that a code change does not reinstall them."""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
extras = [e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e]
unknown = [e for e in extras if e not in project["optional-dependencies"]]
if unknown:
    sys.exit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(project['optional-dependencies'])}")
print("\n".join([*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]))
