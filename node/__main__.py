"""`python -m node serve ...`: the same command as `stakeswarm node serve`."""

from node.cli import app

app(prog_name="python -m node")
