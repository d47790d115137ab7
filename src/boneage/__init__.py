"""boneage: pediatric bone age from hand radiographs, as a pipeline over one library.

The package is a house of floors; each imports only from the floors below it:

- ``errors``, ``contracts``, ``config`` (with ``presets/``), ``tracking`` (and ``resources/``): the
  base every other floor stands on;
- ``data``: films in (sources, reading, the hand crop, the synthetic set; ingest and preprocess);
- ``model``: the network and what travels with it (the out-of-distribution check, the calibrated
  interval, predictor.json);
- ``serve``: a trained model scoring films (predict, worklists, the REST pyfunc, reports);
- ``training``: training, ensembles, evaluation and registration;
- ``orchestrate``: the Kubeflow pipeline, its components and runners, and the local service stack;
- ``cli``: the `boneage` command, the top floor. ``predict`` and ``scoring`` are aliases that models
  logged by boneage 0.1 import (see each).
"""

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# TensorFlow reads this when it is first imported: keep its C++ INFO lines (CPU feature notes and
# the like) out of every command's output; warnings and errors still show. Set it to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# What TensorFlow 2.21 writes through absl while it is imported, before anything can configure absl,
# whatever TF_CPP_MIN_LOG_LEVEL says: four lines in every process (tensorflow/tensorflow#102212).
TENSORFLOW_IMPORT_NOTES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|\] oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc|^To enable the following instructions"
)


class _QuietImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The first import of ``name`` runs with the process's stderr (file descriptor 2) caught; what
    it wrote goes back out, less the lines ``notes`` matches."""

    def __init__(self, name: str, notes: re.Pattern):
        self.name, self.notes, self.loader = name, notes, None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                lines = caught.read().decode(errors="replace").splitlines(keepends=True)
                sys.stderr.write("".join(line for line in lines if not self.notes.search(line)))
                sys.stderr.flush()
                module.__spec__.loader = self.loader


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietImport("tensorflow", TENSORFLOW_IMPORT_NOTES))


__version__ = "0.1.0"
