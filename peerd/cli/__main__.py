import sys

from peerd.cli.peerctl import main

sys.exit(main())
