"""DVC stage `report`: a thin entry into `nstlab report` (dvc.yaml lists its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["report", *sys.argv[1:]])
