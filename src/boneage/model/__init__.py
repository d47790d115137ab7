"""The network and what travels with it: the Keras model, its out-of-distribution check, the
calibrated interval and predictor.json. Imports data and the base."""
