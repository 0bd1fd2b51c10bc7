"""`make bench`: the pipeline's throughput measured against the codec's ceiling on this machine.

One run measures the raw codec ceiling, starts the whole system as `make run` does (with its own database,
bus prefix and image origin), drives it with batches, and writes docs/benchmarks.md and docs/throughput.png.
"""
