"""``python -m bench``: the scenario runner (``bench/run.py``)."""
from bench.run import main

raise SystemExit(main())
