"""Distil a teacher into a student: `python distill.py [group=option ...] [key=value ...]` (see README).

Trains the teacher, a baseline student (hard labels) and a distilled student (hard labels and
the teacher's soft targets) from the same initialisation, and writes comparison.md / .png.
"""

import hydra
from omegaconf import DictConfig

from labkit.cli import run_task
from labkit.config.overrides import unknown_keys_in_one_line
from labkit.config.resolvers import register_resolvers
from labkit.distill import distill
from labkit.engine.distributed import join_process_group

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="distill")
def main(cfg: DictConfig) -> float | None:
    return run_task(distill, cfg)


if __name__ == "__main__":
    join_process_group()  # under torchrun: one process group, one run directory
    with unknown_keys_in_one_line("distill"):  # a mistyped key: labkit's one line, not Hydra's five
        main()
