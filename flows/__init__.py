"""Prefect flows wiring the stages of :mod:`pipeline`; nothing computational lives here."""
