"""ESPO headline study: PPO vs ESPO, its single-signal ablations, matched random truncation and the
oracle, on the default and the regret-trap planted-failure envs (``sweep``: settings; ``analysis``:
score, verdicts, figures; ``run``: ``main``, what ``testbed demo`` runs)."""
