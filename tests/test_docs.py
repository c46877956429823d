"""The documentation cannot drift: the flag reference is what the parsers say, every flag the
guides mention exists, and the training guide's configuration example is the default one."""

import json
import os
import re

from conftest import ROOT, load_script
from evaluation.command_line.parsers import PARSERS

DOCS = ("README.md", "RESULTS.md", "docs/training.md", "docs/estimators.md",
        "docs/extending.md", "docs/reproducing.md", "docs/tutorial.md", "docs/distributed.md",
        "docs/benchmarks.md")
#: flags of other programs that the guides mention (pytest's and torchrun's)
OTHERS = {"--durations", "--standalone", "--nproc-per-node", "--nnodes", "--rdzv-backend",
          "--rdzv-id", "--rdzv-endpoint"}


def test_flag_reference_is_generated_from_the_parsers():
    with open(os.path.join(ROOT, "docs", "flags.md")) as handle:
        committed = handle.read()
    assert committed == load_script("flag_reference").reference(), \
        "docs/flags.md is out of date: run python scripts/flag_reference.py --overwrite"


def test_every_flag_the_guides_mention_exists():
    known = set(OTHERS)
    for make_parser in PARSERS.values():
        for action in make_parser()._actions:
            known.update(action.option_strings)
    for name in DOCS:
        with open(os.path.join(ROOT, name)) as handle:
            text = handle.read()
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
            assert flag in known, f"{name} mentions {flag}, which no script has"


def test_the_configuration_example_of_the_training_guide_is_the_default_configuration():
    from models.base.config import RunConfig

    with open(os.path.join(ROOT, "docs", "training.md")) as handle:
        section = handle.read().split("## The run configuration", 1)[1]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    assert example == RunConfig().to_dict(), \
        "docs/training.md's configuration example is out of date: print RunConfig().to_dict()"
