"""The synthetic DEAP scenarios by name (see :mod:`pipeline.sources.synthetic_spec`).

Apart, and without numpy, because the command line lists them in its options before it sets the
thread counts that numpy reads once, when it is imported.
"""

SCENARIOS = ("planted", "null", "confound")
