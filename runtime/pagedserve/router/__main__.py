"""``python -m pagedserve.router``: the router without the ``pagedserve`` CLI (whose other
subcommands import torch); the entry point of ``Dockerfile.router``."""
from __future__ import annotations

import sys

from pagedserve.router.cli import main

if __name__ == "__main__":
    sys.exit(main())
