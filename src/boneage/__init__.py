"""boneage: pediatric bone age from hand radiographs."""

import os

# TensorFlow reads this when it is first imported: keep its C++ INFO lines (CPU feature notes and
# the like) out of every command's output; warnings and errors still show. Set it to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


__version__ = "0.1.0"
