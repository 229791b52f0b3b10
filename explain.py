"""Class activation maps of CNN runs: `python explain.py ckpt_path=RUN_DIR/checkpoints/best.pt`
(or a distillation run folder, or a list of checkpoints side by side; README, "What does the
network look at?")."""

import hydra
from omegaconf import DictConfig

from labkit.cli import run_task
from labkit.config.overrides import unknown_keys_in_one_line
from labkit.config.resolvers import register_resolvers
from labkit.explain import explain_checkpoints

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="explain")
def main(cfg: DictConfig) -> float | None:
    return run_task(explain_checkpoints, cfg)


if __name__ == "__main__":
    with unknown_keys_in_one_line("explain"):  # a mistyped key: labkit's one line, not Hydra's five
        main()
