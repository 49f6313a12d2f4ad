"""`bertpretrain finetune ...`: fine-tune a pretrained model on a downstream task. The same
Hydra app as `train` (commands/train.py: overrides, -m, --cfg job, --help, run dirs,
torchrun), composing conf/finetune.yaml; the run is `training.finetune.finetune`.
"""

from __future__ import annotations

from bertpretrain.commands import train


def main(argv: list[str]) -> None:
    train.main(argv, config_name="finetune")
