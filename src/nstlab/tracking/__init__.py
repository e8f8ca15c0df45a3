"""Experiment tracking: the MLflow run (write side), its offline buffer, the read side, the run
records DVC compares, and the ablation grid runner. Only this package imports mlflow, lazily."""
