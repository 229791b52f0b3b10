"""The README's commands compose: every ``python train.py`` / ``distill.py`` / ``eval.py`` /
``explain.py`` line of its bash blocks, composed in-process (first job of a sweep) and checked
against the entry point's schema, so the README cannot drift from the configs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from labkit.config.validate import validate_config

from .conftest import compose_config

ROOT = Path(__file__).resolve().parent.parent
ENTRY = r"(?:\w+=\S*\s+|time\s+)*python (train|distill|eval|explain)\.py\b"  # OMP_NUM_THREADS=1, time
SCRIPTS = {"train.py": "train", "distill.py": "distill", "eval.py": "eval", "explain.py": "explain"}
# <run>, logs/train/runs/<run>, <seed 42's run>; logs/my-run: the folder an earlier command makes
PLACEHOLDER = re.compile(r"[\w./-]*<[^<>]+>|logs/my-run")
DROPPED = {"-m", "--multirun"}
SHARED = ROOT.parent / "shared" / "datasets"  # this repository's data sets (Fashion-MNIST, CIFAR-10-JPEG)


def readme_commands() -> list[str]:
    """The entry-point commands of the README's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = (line.strip() for block in blocks for line in re.sub(r"\\\n\s*", " ", block).splitlines())
    return [line for line in lines if re.match(ENTRY, line)]


def overrides_of(command: str, stand_in: Path) -> tuple[str, list[str]]:
    """The entry point and its overrides: placeholders replaced by ``stand_in`` (a folder with
    ``checkpoints/best.pt`` and ``teacher.pth``), ``-m`` and ``--cfg job`` dropped, a sweep's
    first job."""
    words = shlex.split(PLACEHOLDER.sub(str(stand_in), command), comments=True)
    at = words.index("python")
    script, args = words[at + 1], words[at + 2 :]
    if "--cfg" in args:
        at = args.index("--cfg")
        del args[at : at + 2]
    args = [a for a in args if a not in DROPPED]
    parsed = OverridesParser.create().parse_overrides(args)
    first_job = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0][0] if args else []
    return SCRIPTS[script], list(first_job)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A run folder for the README's ``<run>`` placeholders: a checkpoint file and a teacher file."""
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    (run / "FashionMNIST").mkdir()  # data.root=<folder holding FashionMNIST/>
    for path in (run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt", run / "teacher.pth"):
        torch.save({}, path)
    return run


def test_the_readme_has_commands_of_every_entry_point():
    scripts = {re.match(ENTRY, command).group(1) + ".py" for command in readme_commands()}
    assert scripts == set(SCRIPTS) and len(readme_commands()) > 30


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_composes(command, stand_in, tmp_path, monkeypatch):
    # the devices of this machine are not the README's business (trainer=gpu on a CPU machine)
    monkeypatch.setattr("labkit.config.validate.resolve_device", lambda device: device)
    try:
        entry, overrides = overrides_of(command, stand_in)
        cfg = compose_config(overrides, tmp_path / "run", config_name=entry)
        validate_config(cfg, entry)
    except Exception as exc:  # noqa: BLE001 - any failure, a ConfigError or Hydra's, names the command
        pytest.fail(f"{command}\n  -> {type(exc).__name__}: {exc}")
    if "data" in cfg and SHARED.is_dir():  # a fresh clone has data/MNIST; the rest is fetched or named
        missing = missing_data(cfg.data)
        assert missing is None, f"{command}\n  -> reads {missing}, which is neither here nor downloaded"


def missing_data(data) -> str | None:
    """Where the composed data would be read from, when nothing is there and nothing is fetched."""
    kind = str(data.get("_target_")).rsplit(".", 1)[-1]
    if data.get("download"):
        return None
    where = {"MNISTFamily": lambda: Path(data.root) / data.folder, "ImageFolder": lambda: Path(data.path),
             "CIFAR": lambda: Path(data.root) / ("cifar-10-batches-py" if data.num_classes == 10
                                                 else "cifar-100-python")}.get(kind)
    return None if where is None or where().exists() else str(where())
