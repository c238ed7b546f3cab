"""Benchmarks, run on demand with `make bench`; results are written under build/bench/."""
