"""``python -m peerd`` is ``peerd``."""

import sys

from peerd.main import main

sys.exit(main())
