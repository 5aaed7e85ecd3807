"""``python -m portraitisr.study create|serve|results``: the same as ``portraitisr study ...``."""
import sys

from portraitisr.study.cli import main

sys.exit(main())
