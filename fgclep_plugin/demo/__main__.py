"""``python -m fgclep_plugin.demo``."""

import sys

from .cli import main

sys.exit(main())
