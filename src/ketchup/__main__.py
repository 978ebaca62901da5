import sys

from ketchup.cli import main

sys.exit(main())
