"""What every per-run measurement (``testbed.ops.studies.MEASUREMENTS``) needs: a finished run's config
and its trainer, resumed from the last checkpoint."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from testbed import config as config_mod
from testbed.errors import UserError


def already_measured(path: str | Path, **settings) -> bool:
    """Whether a measurement's JSON file exists with these settings (it is then kept, not redone)."""
    path = Path(path)
    if not path.is_file():
        return False
    old = json.loads(path.read_text())
    return all(old.get(k) == v for k, v in settings.items())


def run_config(run_dir: str | Path) -> config_mod.Config:
    """A run directory's ``config.yaml``, with the folder it sits in (the run may have moved)."""
    run_dir = Path(run_dir)
    return config_mod.load(run_dir / "config.yaml", [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"])


@contextmanager
def finished_trainer(run_dir: str | Path, cfg: config_mod.Config, *, threads: int | None = 1) -> Iterator:
    """The finished run's :class:`testbed.ops.trainer.Trainer` (its weights and rule state), closed on
    exit; ``threads``: torch threads meanwhile (1: measurements run beside a study's workers)."""
    from testbed.ops.trainer import Trainer

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        trainer = Trainer(cfg, Path(run_dir))
        try:
            if trainer.step < cfg.run.steps:
                raise UserError(f"{run_dir}: the run is not finished (step {trainer.step} of {cfg.run.steps})")
            yield trainer
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(before)
