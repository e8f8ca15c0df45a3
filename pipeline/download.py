"""DVC stage `download`: a thin entry into `nstlab download` (dvc.yaml lists its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["download", *sys.argv[1:]])
