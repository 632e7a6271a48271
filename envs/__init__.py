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
    # Issue 19 regimes: each knob is off in the variants above, so their numbers are unchanged.
    # Long responses: 64 lengths evenly spaced over 64..512 (max_len fits the longest plus EOS).
    # Critical positions and the recoverable cost are scaled down so that the per-token error rates
    # of the default give a learnable task at these lengths: 1-10 critical positions, and a uniform
    # policy's ~L/2 recoverable errors cost at most half the reward.
    "testbed/PlantedFailureLong-v0": dict(
        length_dist="uniform", length_spacing="quantile", min_len=64, max_len_target=512, target_len=64,
        max_len=513, critical_frac=0.02, recoverable_cost=0.002,
    ),
    # Heavy tail: lognormal lengths with median 32 and p99 / p50 = 8 at quantile-spaced lengths
    # (median 32, longest ~275; minimum 4), for T-PPO's carry-over and ESPO's waste on long rows.
    "testbed/PlantedFailureTail-v0": dict(
        length_dist="lognormal", length_spacing="quantile", target_len=32, length_tail=8.0, min_len=4,
        max_len=320, critical_frac=0.05, recoverable_cost=0.01,
    ),
    # Derailment: the default, but a doomed row runs on to 4x a successful row's 13 tokens.
    "testbed/PlantedFailureDerail-v0": dict(num_problems=16, derail=4.0, max_len=256),
    # Recovery: the default, half the rows repairable, a repair takes 3 tokens (plus the wrong one).
    "testbed/PlantedFailureRecover-v0": dict(num_problems=16, repair_prob=0.5, repair_cost=3, max_len=32),
    # The tiny instance with recovery, small enough for the exact DP (6 actions, REVISE = 5).
    "testbed/PlantedFailureRecoverTiny-v0": dict(
        num_problems=3, prompt_len=1, num_content_tokens=3, max_len=9, length_dist="uniform",
        target_len=4, min_len=3, max_len_target=5, num_acceptable=2, num_acceptable_critical=1,
        critical_frac=0.4, structure_seed=2, repair_prob=0.5, repair_cost=2,
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
