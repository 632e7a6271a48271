"""Reads run directories: tables, scores and plots.

- :mod:`analysis.runs`: ``load_run(dir)``, ``load_runs(dirs or folder) -> DataFrame`` (one row per run
  and step, with labels and config), and per-run reductions (final mean, first step at a level, ...).
- :mod:`analysis.plots`: generic figures from that table, markdown tables, and ``plot_runs_cli``
  (``testbed plot``), the only generic writer.
- :mod:`analysis.experiments`: the studies, one package each, listed in ``experiments.REGISTRY``.

Imports numpy, pandas, matplotlib, PyYAML (to read ``config.yaml``) and, of ``testbed``, only the
torch-free :mod:`testbed.metrics` (tests/test_imports.py enforces it).
"""
