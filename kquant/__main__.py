from kquant.cli import run

run()
