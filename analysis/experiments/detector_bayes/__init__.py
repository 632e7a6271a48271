"""ESPO's stop rule scored against the exact Bayes-optimal failure detector on the tiny env (``testbed demo --study detector_bayes``)."""
