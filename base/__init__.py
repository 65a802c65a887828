"""Library code of the pipeline, one subpackage per stage: preprocessing -> data -> training -> prediction.
Modules at this level (atomic, errors, safe_pickle) are shared by every stage."""
