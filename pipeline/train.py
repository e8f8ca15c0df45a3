"""DVC stage `train`: `nstlab train`, forked from a warm process when one is up
(nstlab.warm); dvc.yaml lists its deps, params and outs."""

import sys

from nstlab.warm import run_stage

run_stage(["train", *sys.argv[1:]])
