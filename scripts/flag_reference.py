"""Write docs/flags.md: every flag of every script, generated from the scripts' own parsers
(:data:`evaluation.command_line.parsers.PARSERS`, the parsers the scripts run with).

Example::

    python scripts/flag_reference.py --overwrite   # rewrites docs/flags.md (from the root)
    python scripts/flag_reference.py --check    # exit 2 if docs/flags.md is out of date
"""

from evaluation import command_line as cli
from evaluation.command_line import parsers
from models.utilities.entry_points import entry_point
from models.base.config import ConfigError
from models.utilities.files import atomic_write_text, refuse_to_overwrite


def reference():
    """The text of docs/flags.md, from a fresh parser of every script."""
    return cli.flag_reference({name: make() for name, make in parsers.PARSERS.items()})


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


main = entry_point(_main, parsers.flag_reference)


if __name__ == "__main__":
    main()
