"""ESPO difficulty sweep (bsuite-style): one env knob varied at a time around the default env."""
