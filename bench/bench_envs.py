"""Row-steps per second: the native numpy vector env against a Python loop over the single env.

Both sides do the same work: ``ROWS`` rows of ``testbed/PlantedFailure-v0`` stepped ``STEPS`` times
with uniformly random actions (so episodes end often and restarts are included). The vector env
steps all rows in one call with next-step autoreset; the loop steps one unwrapped single env
``ROWS * STEPS`` times, resetting it when an episode ends. Each side reports its best of
``--repeats`` timings (the vector side takes milliseconds, so one timing is noisy).

``--case long`` runs the same comparison on ``testbed/PlantedFailureLong-v0`` (responses of 64-512
tokens, observations of 515 tokens a row) and also times the row API (``step_rows``, no observation
copy), which is how the testbed's collector drives the env.

Run: ``PYTHONPATH=. python bench/bench_envs.py [--case default|long] [--rows 4096] [--steps 50] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)

CASES = {"default": "testbed/PlantedFailure-v0", "long": "testbed/PlantedFailureLong-v0"}
ENV_ID = CASES["default"]


def bench_vector(rows: int, steps: int, actions: np.ndarray) -> float:
    """Seconds for ``steps`` calls of ``step`` on ``rows`` rows."""
    venv = gym.make_vec(ENV_ID, num_envs=rows, vectorization_mode="vector_entry_point")
    venv.reset(seed=0)
    start = time.perf_counter()
    for k in range(steps):
        venv.step(actions[k])
    return time.perf_counter() - start


def bench_rows(rows: int, steps: int, actions: np.ndarray) -> float:
    """Seconds for ``steps`` calls of ``step_rows`` on the live rows (ended rows restarted)."""
    venv = gym.make_vec(ENV_ID, num_envs=rows, vectorization_mode="vector_entry_point").unwrapped
    venv.reset(seed=0)
    all_rows = np.arange(rows)
    start = time.perf_counter()
    for k in range(steps):
        live = venv.row_info(all_rows)["live"]
        if not live.all():
            venv.reset_rows(all_rows[~live])
        venv.step_rows(all_rows, actions[k])
    return time.perf_counter() - start


def bench_loop(rows: int, steps: int, actions: np.ndarray) -> float:
    """Seconds for ``rows * steps`` single-env steps in a Python loop."""
    env = gym.make(ENV_ID).unwrapped  # no checker wrappers: the fastest fair single-env loop
    env.reset(seed=0)
    flat = actions.reshape(-1).tolist()
    start = time.perf_counter()
    for a in flat:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="default", help="which env to time")
    parser.add_argument("--rows", type=int, default=4096, help="rows stepped together")
    parser.add_argument("--steps", type=int, default=50, help="steps per row")
    parser.add_argument("--repeats", type=int, default=3, help="timings per side; the best is kept")
    args = parser.parse_args()
    global ENV_ID
    ENV_ID = CASES[args.case]
    vocab_size = gym.make(ENV_ID).unwrapped.vocab_size
    actions = np.random.default_rng(0).integers(vocab_size, size=(args.steps, args.rows))

    vec_s = min(bench_vector(args.rows, args.steps, actions) for _ in range(args.repeats))
    loop_s = min(bench_loop(args.rows, args.steps, actions) for _ in range(args.repeats))
    rows_s = min(bench_rows(args.rows, args.steps, actions) for _ in range(args.repeats)) if args.case == "long" else None
    row_steps = args.rows * args.steps
    vec_rate, loop_rate = row_steps / vec_s, row_steps / loop_s
    print(f"{ENV_ID}: {args.rows} rows x {args.steps} steps = {row_steps} row-steps each")
    print(f"native vector env : {vec_rate:12,.0f} row-steps/s  ({vec_s:.3f} s)")
    if rows_s is not None:
        print(f"row API step_rows : {row_steps / rows_s:12,.0f} row-steps/s  ({rows_s:.3f} s)")
    print(f"single-env loop   : {loop_rate:12,.0f} row-steps/s  ({loop_s:.3f} s)")
    print(f"speed-up          : {vec_rate / loop_rate:12.1f}x")


if __name__ == "__main__":
    main()
