"""``python -m lucidd.cli ARGS``: run lucidctl (layer 4)."""

import sys

from lucidd.cli import main

sys.exit(main())
