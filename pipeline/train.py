"""DVC stage `train`: a thin entry into `nstlab train` (dvc.yaml lists its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["train", *sys.argv[1:]])
