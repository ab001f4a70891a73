"""``python -m benchmarks``: see :func:`benchmarks.main`."""

import sys

from benchmarks import main

sys.exit(main())
