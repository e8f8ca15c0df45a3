"""DVC stage `report`: a thin entry into `nstlab report` (see dvc.yaml for its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["report", *sys.argv[1:]])
