"""The long-chain LLM study: ESPO's paper's questions on 6-10-step arithmetic chains (``testbed demo --study llm_long``)."""
