"""``python -m pagedserve_operator`` == ``pagedserve-operator``."""
import sys

from .main import main

sys.exit(main())
