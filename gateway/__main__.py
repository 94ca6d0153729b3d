"""``python -m gateway``: the same as the ``gateway`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
