"""A trained model scoring films: the predictor (preprocessing, interval, SDS, refusals),
worklists, the REST pyfunc and its packaging, the clinical report. Imports model, data and the base."""
