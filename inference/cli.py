"""Shared command-line plumbing: one clear line instead of a traceback for bad input."""

import argparse
import os
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in ``--help`` unless it is empty (None or an unset switch)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.help is None:
            return action.help
        return super()._get_help_string(action)


def run(main, parser, argv=None):
    """Parse ``argv`` with ``parser`` and call ``main(args)``.

    Errors that describe bad input (``ValueError`` and its subclasses, missing or unreadable files)
    end the program with exit status 2 and one line on stderr. Set ``VAE_TRACEBACK=1`` to see the
    full traceback instead. Ctrl-C ends with status 130; checkpoints already written stay intact.
    """
    args = parser.parse_args(argv)
    try:
        return main(args)
    except KeyboardInterrupt:
        print("\ninterrupted; files already written are complete (rerun with --resume where it"
              " applies)", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError) as error:
        if os.environ.get("VAE_TRACEBACK"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def comma_list(cast):
    """An argparse type for comma-separated values, e.g. ``--hidden-dims 512,256``."""

    def parse(text):
        try:
            return [cast(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"expected a comma-separated list, got {text!r}") from None

    parse.__name__ = f"comma-separated {cast.__name__} list"
    return parse
