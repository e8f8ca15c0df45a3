"""DVC stage `pair`: a thin entry into `nstlab pair` (see dvc.yaml for its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["pair", *sys.argv[1:]])
