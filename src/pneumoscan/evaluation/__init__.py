"""Evaluation: inference on a data split, metrics, the temporal view and every figure."""
