"""Preprocessing stage: reads an Aff-Wild2-layout database (annotations, cropped_aligned, videos)
and writes per-trial feature folders, dataset_info.pkl and mean_std_dict.pkl.
Driven by `preprocessing.py` (features) and `calculate_mean_and_std.py` (statistics)."""
