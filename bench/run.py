"""Run the mpslayout benchmark suite: the same code as ``mpslayout bench``.

Usage: ``python bench/run.py [--quick] [--cases SUBSTRING] [--repeats N] [--threads 1,2]
[--json PATH] [--markdown PATH] [--plot PATH]``. See bench/README.md.
"""

from __future__ import annotations

import sys

from mpslayout.bench import main

if __name__ == "__main__":
    sys.exit(main())
