"""Films in: where a dataset comes from, reading radiographs, finding the hand (rules and the
learned locator), the synthetic set, and the stages ingest and preprocess. Imports the base only."""
