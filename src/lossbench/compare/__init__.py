"""Compare losses: plan a grid of runs, execute it, report on the run folders, judge it in CI.

- `plan/`: a grid (datasets x models x losses x seeds) resolved into run entries.
- `execute/`: the entries still to train, trained here or on Ray, resumed and locked.
- `report/`: finished run folders -> tables, paired tests, files and figures.
- `ci/`: expectations on the results and the exit code of a pipeline step.
- `pipeline.py`: the three in order (`compare_losses`).
"""
