"""Targets: each turns a :class:`~mpslayout.export.plan.Plan` into its layouts through the
engine and writes the result atomically (``mps``: one folder of MPS files and a manifest)."""
