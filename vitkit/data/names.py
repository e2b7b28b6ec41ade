"""The dataset names every command's --dataset accepts, in one place: the loader (datasets.py) checks against them
and each command's help text lists them from here. No imports, so `--help` stays fast."""

DATASET_NAMES = ["embedded", "fashion-mnist", "mnist", "cifar10", "cifar100", "tiny-imagenet"]  # plus imagefolder:PATH
DATASETS_HELP = f"{DATASET_NAMES[0]} (default), {', '.join(DATASET_NAMES[1:])} or imagefolder:PATH"
DATASET_LIST = f"{', '.join(DATASET_NAMES)}, imagefolder:PATH"
