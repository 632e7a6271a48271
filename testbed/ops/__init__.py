"""The application layer: what runs the algorithm core on the packages beside it.

The core (``testbed`` outside this package) is the algorithm: types, estimators, losses, stop rules,
the collector, the learner, metric names; it imports neither ``envs``, ``llm_backend``, ``analysis``
nor this package. Here live the operations that compose them: building a run's task and backend
(:mod:`.build`), a run with its directory, lock, checkpoints and resume (:mod:`.trainer`,
:mod:`.rundir`, :mod:`.lock`), sweeps and their executors (:mod:`.sweep`), the one study runner
(:mod:`.studies`), offline detection (:mod:`.detect`), evaluation from the command line
(:mod:`.evaluate`) and the ``testbed`` console script (:mod:`.cli`). This package may import every
other; nothing else imports it (``tests/test_imports.py`` states each edge).

Why a subpackage rather than a fifth top-level package: the console script and the run directories
are the testbed's, and users already reach them as ``testbed ...``; keeping the core flat beside it
leaves every core import path unchanged.
"""
