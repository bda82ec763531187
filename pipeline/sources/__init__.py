"""Readers: each turns one source file into a :class:`Trials`."""

from pipeline.sources.trials import DEAP_CHANNELS, LABEL_NAMES, Trials

__all__ = ["DEAP_CHANNELS", "LABEL_NAMES", "Trials"]
