"""T-PPO speed-up study: PPO vs T-PPO (window 8) vs T-PPO with ESPO's stop rule on the long-tailed
planted-failure env (``sweep``: settings; ``analysis``: score, verdicts, figures; ``run``: ``main``)."""
