"""Benchmarks and quality harnesses (bench, LoCoMo, PrefEval); each prints JSON."""
