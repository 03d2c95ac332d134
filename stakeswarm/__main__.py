from stakeswarm.cli import app

app(prog_name="stakeswarm")
