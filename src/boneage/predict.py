"""An alias kept for models logged by boneage 0.1: their ``serving.py`` (logged with each model as
code) imports the predictor from here. It lives in boneage.serve.predict."""

from boneage.serve.predict import Predictor

__all__ = ["Predictor"]
