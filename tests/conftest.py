"""Shared fixtures: tiny generated MNIST-format data, config composition, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from labkit.config.resolvers import register_resolvers
from labkit.data.idx import write_idx

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

register_resolvers()


def make_learnable_images(n: int, seed: int, classes: int = 10, size: int = 28):
    """Each class is a fixed random prototype; samples are noisy copies of it (easy to learn)."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).integers(0, 256, (classes, size, size))
    labels = rng.integers(0, classes, n)
    noise = rng.normal(0, 40, (n, size, size))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_mnist_folder(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200,
                       gz: bool = True) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_learnable_images(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte{ext}", labels)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root with tiny learnable MNIST and FashionMNIST folders."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_folder(root, "MNIST")
    write_mnist_folder(root, "FashionMNIST", gz=False)
    return root


def compose_config(overrides: list[str] | None = None, output_dir: Path | None = None,
                   config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml the way the entry point does, with Hydra's runtime info set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides or [], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or "/tmp/labkit-test-run")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), tmp_path / "run")

    return make


def run_cli(script: str, *args: str, env: dict | None = None, timeout: int = 300,
            cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run an entry-point script as a user would, W&B off unless the caller says otherwise."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=cwd,
    )


def write_cifar_folder(root: Path, variant: str = "cifar10", per_batch: int = 40, n_test: int = 40,
                       seed: int = 0) -> dict:
    """Tiny CIFAR files in the official pickle layout (bytes keys, ``[N, 3072]`` uint8 rows).

    Images are noisy class prototypes, so a model can learn them; returns the written arrays.
    """
    import pickle

    classes = 10 if variant == "cifar10" else 100
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(99).integers(0, 256, (classes, 3072))
    label_key = b"labels" if variant == "cifar10" else b"fine_labels"
    if variant == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        folder = root / "cifar-10-batches-py"
    else:
        folder, names = root / "cifar-100-python", ["train", "test"]
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        n = n_test if name in ("test_batch", "test") else per_batch * (5 if variant == "cifar100" else 1)
        labels = rng.integers(0, classes, n)
        data = np.clip(prototypes[labels] + rng.normal(0, 30, (n, 3072)), 0, 255).astype(np.uint8)
        entry = {b"batch_label": name.encode(), label_key: labels.tolist(), b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        if variant == "cifar100":
            entry[b"coarse_labels"] = (labels // 5).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
        written[name] = (data, labels)
    return written
