"""DVC stage `pair`: a thin entry into `nstlab pair` (dvc.yaml lists its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["pair", *sys.argv[1:]])
