"""`python -m nstlab` = the `nstlab` command."""

from nstlab.cli import main

main()
