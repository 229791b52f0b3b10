"""Evaluate a checkpoint: `python eval.py ckpt_path=RUN_DIR/checkpoints/best.pt [data.root=DIR]`."""

import hydra
from omegaconf import DictConfig

from labkit.cli import run_task
from labkit.config.overrides import unknown_keys_in_one_line
from labkit.config.resolvers import register_resolvers
from labkit.evaluation import evaluate_checkpoint

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return run_task(evaluate_checkpoint, cfg)


if __name__ == "__main__":
    with unknown_keys_in_one_line("eval"):  # a mistyped key: labkit's one line, not Hydra's five
        main()
