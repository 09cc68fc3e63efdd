"""Independent per-image references, written from the papers and not from menet_jax: numpy
and cvxpy reconstructors (`matrices`) that the tests compare against and the benchmarks time
menet_jax against (`per_image`)."""
