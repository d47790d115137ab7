"""Training and what follows it: the input pipelines, train, ensembles, the fitted
out-of-distribution check, evaluate and register. Imports serve (to package the model it trains),
model, data and the base."""
