"""Gymnasium token-MDPs with planted failure points; importing this package registers them.

Every id uses the ``testbed`` namespace, the single env :class:`~envs.planted_failure.PlantedFailureEnv`
and the native batch :class:`~envs.planted_failure.PlantedFailureVectorEnv` (``vector_entry_point``),
so ``gymnasium.make_vec(id, num_envs=N)`` steps N rows in one numpy call. Variants differ only in
``kwargs``; :data:`VARIANTS` is the one list of them.
"""

from gymnasium.envs.registration import register, registry

VARIANTS: dict[str, dict] = {
    # Default: fixed length 12, 2 critical positions per problem, 8 of 16 content tokens acceptable.
    # A uniform policy succeeds 0.6% of the time (EOS exactly at 12 is the hard part), so PPO has
    # a signal from the first batches; a tabular REINFORCE learner reaches ~60% in 400 steps of 64.
    "testbed/PlantedFailure-v0": dict(num_problems=16),
    # T-PPO: lognormal lengths with median 12 and a long right tail (a few problems need 40+).
    "testbed/PlantedFailureLongTail-v0": dict(
        length_dist="lognormal", target_len=12, length_sigma=0.6, min_len=4, max_len=64
    ),
    # Regret trap: non-critical positions accept 2 of 16 tokens, so cheap recoverable errors are
    # the common case, while one critical position per problem (8 of 16 acceptable) decides the
    # outcome. Errors cost so little that a learning policy keeps making them (uniform success
    # 1.3%). A detector that stops on surprising tokens alone stops mostly healthy rows.
    "testbed/PlantedFailureTrap-v0": dict(
        num_problems=16, num_acceptable=2, num_acceptable_critical=8, critical_frac=0.1, recoverable_cost=0.02
    ),
    # Small enough for envs.solver's exact DP over every prefix (5 actions; seed 2 gives L = 5, 4, 3).
    "testbed/PlantedFailureTiny-v0": dict(
        num_problems=3, prompt_len=1, num_content_tokens=3, max_len=6, length_dist="uniform",
        target_len=4, min_len=3, max_len_target=5, num_acceptable=2, num_acceptable_critical=1,
        critical_frac=0.4, structure_seed=2,
    ),
}
"""Registered id -> constructor kwargs, over the defaults of ``PlantedFailureEnv``."""

ENV_IDS = tuple(VARIANTS)

for _id, _kwargs in VARIANTS.items():
    if _id not in registry:  # importlib.reload must not warn about re-registration
        register(
            id=_id,
            entry_point="envs.planted_failure:PlantedFailureEnv",
            vector_entry_point="envs.planted_failure:PlantedFailureVectorEnv",
            kwargs=_kwargs,
        )
