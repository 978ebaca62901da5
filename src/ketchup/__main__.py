import sys

from ketchup.worker import run

sys.exit(run("ketchup", sys.argv[1:]))
