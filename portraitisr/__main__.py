"""``python -m portraitisr``: the same as the ``portraitisr`` command."""
import sys

from portraitisr.cli import main

sys.exit(main())
