"""Write docs/flags.md: every flag of every script, generated from the scripts' own parsers.

Example::

    python scripts/flag_reference.py --overwrite   # rewrites docs/flags.md (from the root)
    python scripts/flag_reference.py --check    # exit 2 if docs/flags.md is out of date
"""

import os

from evaluation import command_line as cli
from models.utilities.entry_points import entry_point
from models.base.config import ConfigError
from models.utilities.files import atomic_write_text, refuse_to_overwrite

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ("train", "evaluate", "compare", "explore", "tutorial", "make_mnist_subset",
           "benchmark_mixture", "flag_reference", "benchmark", "reproduce", "reproduce_report")
DEFAULT_OUT = os.path.join("docs", "flags.md")


def parsers():
    """{"train.py": parser, ...} of every script."""
    found = {}
    for name in SCRIPTS:
        module = cli.script_module(os.path.join(HERE, f"{name}.py"), "vae_flags")
        found[f"{name}.py"] = module.make_parser()
    return found


def reference():
    return cli.flag_reference(parsers())


def _main(args):
    text = reference()
    if args.check:
        with open(args.out) as handle:
            if handle.read() != text:
                raise ConfigError(f"{args.out} is out of date; run python "
                                  "scripts/flag_reference.py")
        print(f"{args.out} is up to date")
        return text
    refuse_to_overwrite([args.out], args.overwrite)
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return text


def make_parser():
    parser = cli.make_parser("Write the reference of every script's flags (docs/flags.md).",
                             __file__)
    parser.add_argument("--out", default=DEFAULT_OUT, help="the Markdown file to write")
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


main = entry_point(_main, make_parser)


if __name__ == "__main__":
    main()
