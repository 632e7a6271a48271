"""The gate-or-detector study: why ESPO's final policy is worse than matched random truncation's."""
