"""The LLM detection study: ESPO's stops on the language model scored against a verifier's ground truth."""
