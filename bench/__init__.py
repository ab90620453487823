"""pagedserve benchmarks: ``python -m bench --list`` (the runner, ``bench/run.py``; scenarios in
``bench/scenarios.py``; results in ``bench/RESULTS.md``)."""
