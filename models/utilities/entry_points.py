"""Command-line plumbing every script shares: one clear line instead of a traceback for bad
input, help that shows defaults, and parsers for list and ``key=value`` flags."""

import argparse
import os
import signal
import sys
import threading

from models.base.registry import parse_option_value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in ``--help`` unless it is empty (None or an unset switch)."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or action.help is None or \
                "%(default)" in action.help:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (``train.py: error: ...``) rather than the
    whole usage, which ``--help`` prints."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run(main, parser, argv=None):
    """Parse ``argv`` (default: ``sys.argv[1:]``) with ``parser`` and return ``main(args)``.

    Errors that describe bad input (``ValueError`` and its subclasses, missing or unreadable files)
    end the program with exit status 2 and one line on stderr. Set ``VAE_TRACEBACK=1`` to see the
    full traceback instead. Ctrl-C ends with status 130; files already written stay intact.
    """
    args = parser.parse_args(argv)
    previous = _on_sigterm(_terminate)
    try:
        return main(args)
    except Terminated:
        print(f"\n{parser.prog}: terminated (SIGTERM); files already written are complete "
              "(rerun with --resume where it applies)", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; files already written are complete (rerun with "
              "--resume where it applies)", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError) as error:
        if os.environ.get("VAE_TRACEBACK"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        _on_sigterm(previous)


class Terminated(BaseException):
    """SIGTERM arrived: the process ends like on Ctrl-C, leaving complete files behind."""


def _terminate(signum, frame):
    raise Terminated()


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM (in the main thread only) and return the previous one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def entry_point(main, make_parser):
    """The ``main(argv=None)`` of a script: parse ``argv`` (default: the command line) with a
    fresh ``make_parser()`` and :func:`run` ``main`` on it."""

    def script_main(argv=None):
        return run(main, make_parser(), argv)

    script_main.__doc__ = "Run the script with ``argv`` (default: the command line)."
    return script_main


def comma_list(cast):
    """An argparse type for comma-separated values, e.g. ``--hidden-dims 512,256``."""

    def parse(text):
        try:
            return [cast(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {cast.__name__} values, got {text!r}"
            ) from None

    parse.__name__ = f"comma-separated {cast.__name__} list"
    return parse


def key_value(text):
    """An argparse type for ``key=value`` (``--prior-option df=3``); the value is read as JSON
    where it parses (``3``, ``[64,32]``, ``true``), else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip().replace("-", "_"), parse_option_value(value.strip())


key_value.__name__ = "key=value"
