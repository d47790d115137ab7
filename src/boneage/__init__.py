"""boneage: pediatric bone age from hand radiographs."""

__version__ = "0.1.0"
