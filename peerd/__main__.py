"""``python -m peerd`` is ``peerd``."""

import sys

from peerd.app.main import main

sys.exit(main())
