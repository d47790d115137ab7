"""Running the steps elsewhere: the Kubeflow pipeline, its components and runners (kfp.local,
a cluster), and the local service stack. Imports every floor below it."""
