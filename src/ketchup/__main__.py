import os
import sys

from ketchup.worker import run

if os.environ.get("KETCHUP_DIE_WITH_PARENT"):  # a process of an N-process job (ketchup.launch)
    from ketchup.devices import die_with_parent

    die_with_parent()
sys.exit(run("ketchup", sys.argv[1:]))
