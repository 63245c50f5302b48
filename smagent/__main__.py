from smagent.cli import run

run()
