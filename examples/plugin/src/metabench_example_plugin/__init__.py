"""An example metabench plugin: a problem (``logistic_hyperparameters``), a model (``resblocks``) and a task source
(``gaussian_blobs``), registered by the entry points in this package's ``pyproject.toml``."""
