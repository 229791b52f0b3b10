"""The one atomic writer every file-writing module uses (checkpoints, image cache, JSON records)."""

from __future__ import annotations

import json
import threading

import pytest

from labkit.io import atomic_write, atomic_write_text
from labkit.tracking import write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_the_file_is_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    import os

    order = []
    monkeypatch.setattr(os, "fsync", lambda fd: order.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b)))
    atomic_write_text(tmp_path / "a" / "b.txt", "x")  # missing folders are made
    assert order == ["fsync", "replace"] and (tmp_path / "a" / "b.txt").read_text() == "x"


def test_concurrent_writers_of_one_file_never_share_a_temporary(tmp_path):
    path = tmp_path / "record.json"
    seen: list[str] = []
    barrier = threading.Barrier(2)

    def write(tmp):
        seen.append(tmp.name)
        barrier.wait(timeout=5)  # both temporaries exist at the same time
        tmp.write_text(json.dumps({"writer": tmp.name}))

    threads = [threading.Thread(target=atomic_write, args=(path, write)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 2
    assert json.loads(path.read_text())["writer"] in seen  # one whole file won


def test_write_json_makes_numbers_plain(tmp_path):
    import torch

    write_json(tmp_path / "s.json", {"acc": torch.tensor(0.5), "loss": float("nan"), "n": [1, 2]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"acc": 0.5, "loss": None, "n": [1, 2]}
