"""`python -m geoml.cli`."""

import sys

from . import main

sys.exit(main())
