"""Training: the one trainer every feed-forward model plugs into, its checkpoints, schedules and
several-process support, plus the adapter library and the speed benchmark built on them."""
