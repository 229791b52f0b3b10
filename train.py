"""Train one model: `python train.py [group=option ...] [key=value ...]` (see README)."""

import hydra
from omegaconf import DictConfig

from labkit.cli import run_task
from labkit.config.overrides import unknown_keys_in_one_line
from labkit.config.resolvers import register_resolvers
from labkit.engine.distributed import join_process_group
from labkit.training import train

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    join_process_group()  # under torchrun: one process group, one run directory
    with unknown_keys_in_one_line("train"):  # a mistyped key: labkit's one line, not Hydra's five
        main()
