"""DVC stage `demo_backbones`: a thin entry into `nstlab demo-backbones` (dvc.yaml lists its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["demo-backbones", *sys.argv[1:]])
