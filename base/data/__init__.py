"""Data stage: reads a preprocessed dataset (npy_data/, dataset_info.pkl, mean_std_dict.pkl) and
yields z-scored, windowed, augmented batches; writes nothing.
Used by `main.py` (training) and `predict.py` (prediction)."""
