"""``make bench``: Service365's benchmark suite (issue 11). See ``bench/run.py``."""
