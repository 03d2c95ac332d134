"""The `stakeswarm` sub-commands, one module per sub-app (`stakeswarm/cli.py` registers them)."""
