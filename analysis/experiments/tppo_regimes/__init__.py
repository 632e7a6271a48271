"""T-PPO phase diagram: length-tail heaviness x window, priced by the cost model."""
