from dlexp.cli import run

run()
