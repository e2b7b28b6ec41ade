"""The paper's section 4.3 and 4.6 experiments at laptop scale: grids (grids.py), running them cell by cell (run.py),
their figures (plots.py) and `vitkit study` (cli.py)."""
