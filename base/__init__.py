"""Library code of the pipeline: data, features, training, evaluation (scripts only wire it)."""
