"""Evaluation of frozen encoders: feature extraction, kNN, linear classifiers on features."""
