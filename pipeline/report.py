"""DVC stage `report`: `nstlab report`, forked from a warm process when one is up
(nstlab.warm); dvc.yaml lists its deps, params and outs."""

import sys

from nstlab.warm import run_stage

run_stage(["report", *sys.argv[1:]])
