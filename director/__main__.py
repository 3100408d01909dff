"""``python -m director`` runs the daemon, like ``directord``."""

import sys

from director.shell.daemon import main

sys.exit(main())
