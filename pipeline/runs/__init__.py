"""Prefect-free runs: plain functions that sequence the stages (preprocess → learn → analyse → report).

The flows in ``flows/`` wrap them, giving each step a Prefect task (retries, logging, the UI) and
the run its lock; a script, a benchmark or a notebook calls them directly.
"""
