"""DVC stage `evaluate`: a thin entry into `nstlab evaluate` (dvc.yaml lists its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["evaluate", *sys.argv[1:]])
