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

import os

# TensorFlow reads this when it is first imported: keep its C++ INFO lines (CPU feature notes and
# the like) out of every command's output; warnings and errors still show. Set it to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


__version__ = "0.1.0"
