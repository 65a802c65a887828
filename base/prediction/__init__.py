"""Prediction stage: reads trained run folders and a preprocessed dataset (or a raw video) and
writes test-set submissions, merged-fold validation scores and per-frame traces.
Driven by `predict.py`."""
