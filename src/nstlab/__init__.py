"""nstlab: an experiment-tracked ablation pipeline for neural style transfer.

Importing the package is cheap and side-effect free: heavy libraries (torch, mlflow, dvc)
are imported by the modules that use them.
"""

__version__ = "0.1.0"
