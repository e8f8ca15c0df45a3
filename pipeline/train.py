"""DVC stage `train`: a thin entry into `nstlab train` (see dvc.yaml for its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["train", *sys.argv[1:]])
