"""An alias kept for models logged by boneage 0.1: their ``serving.py`` (logged with each model as
code) imports the REST scoring from here. It lives in boneage.serve.scoring."""

from boneage.serve.scoring import score_records

__all__ = ["score_records"]
