"""``python -m mpslayout.bench``: the same as ``mpslayout bench`` (each process of
``--processes N`` runs this)."""

import sys

from .cli import main

sys.exit(main())
