"""ESPO phase diagram: derailment x recovery on the planted-failure env."""
