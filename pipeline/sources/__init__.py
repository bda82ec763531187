"""Readers (each turns one source file into a :class:`pipeline.sources.trials.Trials`), the
synthetic DEAP, the data manifests and the isolated reads."""
