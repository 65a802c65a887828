"""Training stage: reads batches from the data stage and a backbone checkpoint, trains under
cross-validation and writes run folders (config.json, checkpoints, history.csv, metrics.json, plots).
Driven by `main.py`, and on clusters by `job.pbs` / `job.slurm` through `base.training.job_array`."""
