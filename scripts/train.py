"""Train a VAE by SVI: the generative story as a Pyro model, the encoder as its guide.

Examples::

    python scripts/train.py --dataset mnist-subset --num-epochs 5 --out runs/demo
    python scripts/train.py --data-dir ../data --num-epochs 10 --z-dim 50
    python scripts/train.py --out runs/demo --resume --num-epochs 20
    python scripts/train.py --dataset mnist-subset --prior my_priors:StudentT --prior-option df=3
"""

from evaluation import command_line as cli
from evaluation.command_line import commands, parsers
from models.utilities.entry_points import entry_point


def _main(args):
    with cli.processes(args) as group:
        return commands.train(args, group)


make_parser = parsers.train   # the name the tests build this parser by
main = entry_point(_main, parsers.train)


if __name__ == "__main__":
    main()
