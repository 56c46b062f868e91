from repack.cli import run

run()
