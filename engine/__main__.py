"""``python -m engine`` is the ``sse-engine`` command."""

import sys

from .cli import main

sys.exit(main())
