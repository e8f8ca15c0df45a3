"""DVC stage `download`: a thin entry into `nstlab download` (see dvc.yaml for its deps, params and outs)."""

import sys

from nstlab.cli import main

main(["download", *sys.argv[1:]])
