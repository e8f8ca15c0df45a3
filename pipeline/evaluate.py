"""DVC stage `evaluate`: `nstlab evaluate`, forked from a warm process when one is up
(nstlab.warm); dvc.yaml lists its deps, params and outs."""

import sys

from nstlab.warm import run_stage

run_stage(["evaluate", *sys.argv[1:]])
