"""testbed.runfiles: the one atomic write and the one checkpoint lookup."""

from __future__ import annotations

import os

import pytest

from testbed import runfiles as R


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    R.atomic_write(p, "old")
    R.atomic_write(p, "new ü")
    assert p.read_text(encoding="utf-8") == "new ü" and os.listdir(tmp_path) == ["a.json"]
    R.atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    p = tmp_path / "a.json"
    R.atomic_write(p, "old")
    with pytest.raises(RuntimeError):
        with R.atomic_path(p) as tmp:
            assert tmp.parent == p.parent and tmp != p  # beside the target: the rename stays on one file system
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_two_writes_of_one_target_use_different_temporaries(tmp_path):
    p = tmp_path / "s.jsonl"
    with R.atomic_path(p) as a, R.atomic_path(p) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert p.read_text() == "a"  # the outer write is the later replace


def test_checkpoint_lookup(tmp_path):
    run = tmp_path / "run"
    assert R.find_checkpoint(run) == run  # no checkpoints folder: the path names the folder itself
    R.checkpoint_dir(run).mkdir(parents=True)
    assert R.find_checkpoint(run) == run / "checkpoints"
    assert R.find_weights(run) == run / "checkpoints" / "model.safetensors"
    assert R.find_weights(run / "checkpoints") == run / "checkpoints" / "model.safetensors"
    f = run / "checkpoints" / "model.safetensors"
    assert R.find_weights(f) == f
