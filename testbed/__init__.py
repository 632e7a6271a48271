"""Algorithm core of the ESPO / T-PPO testbed: types, estimators, losses, stop rules, collector, trainer."""

__version__ = "0.1.0"
