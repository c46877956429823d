"""The typed run configuration: defaults in one place, unknown keys refused with a suggestion,
every part given exactly its own options, and checkpoints of format version 1 still loading,
evaluating and resuming with the numbers they gave."""

import csv
import dataclasses
import json
import math
import os
import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch

from conftest import DATA, load_script, run_main
from evaluation import command_line as cli
from evaluation.command_line import flags as flags_module
from inference.build import build, resolve, takes_option
from inference.checkpoint import load_checkpoint
from inference.log_weights import log_importance_weights
from inference.run_life import load_run
from models.base.config import (PART_OPTION_KEYS, ConfigError, DataConfig, ModelConfig,
                                PartSpec, RunConfig, TrainingConfig, from_flat, setting)
from models.base.registry import Registry
from models.distributions import DiagonalNormalMixture
from models.networks import ACTIVATIONS

LEGACY = os.path.join(DATA, "legacy_v1")


def test_every_default_comes_from_one_place_and_a_sparse_config_builds():
    config = resolve(RunConfig.from_dict({"model": {"z_dim": 2, "x_dim": 10}}))
    architecture = config.model.architecture
    assert architecture == PartSpec("mlp", {"hidden_dims": (512, 256), "activation": "relu"})
    assert config.training == TrainingConfig(objective=PartSpec("elbo", {"num_particles": 1}))
    assert config.data == DataConfig()
    model, guide = build({"z_dim": 2, "x_dim": 10})
    assert model.z_dim == guide.z_dim == 2
    # The mixture priors keep their own defaults, each in its own signature.
    assert resolve(RunConfig.from_dict({"model": {"prior": "mog"}})).model.prior.options[
        "num_components"] == 10
    assert resolve(RunConfig.from_dict({"model": {"prior": "vamp"}})).model.prior.options[
        "num_components"] == 500


def test_each_setting_is_written_once_and_its_flag_and_resume_rule_follow_from_it(
        monkeypatch):
    """The flags of train.py, their help and choices, and what --resume may change are read
    from the configuration's fields: a field added there gets its flag without another edit."""
    parser = load_script("train").make_parser()
    # The first action of each destination: --jit before --no-jit.
    actions = {}
    for action in parser._actions:
        actions.setdefault(action.dest, action)
    for path, item in RunConfig.settings():
        if not item.metadata["flag"]:
            assert item.name not in actions, path
            continue
        action = actions[item.name]
        assert cli.CONFIG_PATHS[item.name] == path
        if item.metadata["flag"] is True:
            assert action.help.startswith(item.metadata["help"].split("{names}")[0]), path
            assert action.choices == item.metadata["choices"], path
    assert set(RunConfig.resumable_paths()) == {
        "training.num_epochs", "device", "data.data_dir", "data.download"}
    # A new field of the training section: a flag in the training group, with its help.
    fields = list(dataclasses.fields(TrainingConfig))
    extended = dataclasses.make_dataclass(
        "TrainingConfig", [("warmup_note", str, setting("none", "a note, for this test"))],
        bases=(TrainingConfig,), frozen=True)
    monkeypatch.setattr(RunConfig, "__annotations__", {**RunConfig.__annotations__,
                                                       "training": extended})
    assert len(dataclasses.fields(extended)) == len(fields) + 1
    table = flags_module._section_flags("training")
    assert table["warmup_note"] == (str, "a note, for this test", None)


def test_unknown_keys_are_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown setting 'z_dm' in model \(did you mean "
                       r"'z_dim'\?\)"):
        RunConfig.from_dict({"model": {"z_dm": 2}})
    with pytest.raises(ConfigError, match=r"unknown setting 'prior_componets' in the "
                       r"configuration \(did you mean 'prior_components'\?\)"):
        RunConfig.from_dict({"prior": "mog", "prior_componets": 3})
    with pytest.raises(ConfigError, match=r"unknown setting 'trainig' in the run configuration "
                       r"\(did you mean 'training'\?\)"):
        RunConfig.from_dict({"model": {}, "trainig": {}})
    with pytest.raises(ConfigError, match=r"the mog prior has no option 'num_componets' \(did "
                       r"you mean 'num_components'\?\); its options: init_spread, "
                       r"num_components"):
        resolve(RunConfig.from_dict({"model": {"prior": {"name": "mog", "options": {
            "num_componets": 3}}}}))


def test_values_are_type_checked():
    with pytest.raises(ConfigError, match=r"z_dim \(--z-dim\) must be a whole number, got 2.5"):
        ModelConfig(z_dim=2.5)
    with pytest.raises(ConfigError, match=r"jit \(--jit\) must be true or false or null, "
                       r"got 'yes'"):
        TrainingConfig(jit="yes")
    with pytest.raises(ConfigError, match="the option sigma of the gaussian likelihood takes a "
                       "number, got 'wide'"):
        resolve(RunConfig.from_dict({"model": {"likelihood": {"name": "gaussian",
                                                              "options": {"sigma": "wide"}}}}))
    # Lossless conversions are made: an int where a float is expected, a list for a tuple.
    config = resolve(RunConfig.from_dict({"model": {"likelihood": {
        "name": "gaussian", "options": {"sigma": 1}}}, "training": {"learning_rate": 1}}))
    assert config.model.likelihood.options["sigma"] == 1.0
    assert isinstance(config.training.learning_rate, float)


def test_configs_are_frozen_and_round_trip_through_plain_data():
    config = resolve(RunConfig.from_dict({"model": {"z_dim": 3, "prior": "flow"}, "seed": 4}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 5
    with pytest.raises(TypeError):
        config.model.prior.options["num_flows"] = 2
    assert RunConfig.from_dict(config.to_dict()) == config
    assert resolve(config) == config
    changed = config.updated({"model.prior.options.num_flows": 2, "training.num_epochs": 3})
    assert changed.model.prior.options["num_flows"] == 2 and changed.training.num_epochs == 3
    assert config.model.prior.options["num_flows"] == 4


def test_derived_seeds_never_change():
    """Every published number depends on these seeds (an epoch's shuffle, a flow's orderings, a
    chunk of an estimate): they were computed once and written here as literals. They must never
    change; a new way of deriving seeds needs a new function, not an edit of this one."""
    from models.base.config import derived_seed

    assert derived_seed(0, 1, "order") == 4564837297219019255
    assert derived_seed(0, 1, 0) == 5859785910394853115
    assert derived_seed(123, 5, 7) == 7181855603579336481
    # The parts are read as text: an int and its string are one part, and 63 bits come out.
    assert derived_seed(0, 1, "0") == derived_seed(0, 1, 0)
    assert all(0 <= derived_seed(seed, 2) < 2 ** 63 for seed in range(20))


def test_options_without_a_default_are_required():
    class Needs:
        context_parameters = ("z_dim",)

        def __init__(self, z_dim, df):
            pass

    registry = Registry("prior", {"needs": Needs})
    with pytest.raises(ConfigError, match=r"the needs prior needs the option df "
                       r"\(--prior-option df=VALUE on the command line\)"):
        registry.resolve("needs")
    assert registry.resolve(PartSpec("needs", {"df": 2})).options == {"df": 2}


# ---------------------------------------------------------------------------------------------
# From flags to configuration

def parsed(*argv):
    return load_script("train").make_parser().parse_args(argv)


def test_part_option_flags_go_to_the_part_that_takes_them():
    base = RunConfig()
    changes = cli.config_changes(parsed("--prior", "flow", "--flow-hidden", "32",
                                        "--sigma", "0.3", "--likelihood", "gaussian"), base)
    assert changes["model.prior.options.flow_hidden"] == 32
    assert changes["model.likelihood.options.sigma"] == 0.3
    assert "model.guide.options.flow_hidden" not in changes
    changes = cli.config_changes(parsed("--guide", "iaf", "--flow-hidden", "32"), base)
    assert changes["model.guide.options.flow_hidden"] == 32
    assert "model.prior.options.flow_hidden" not in changes
    changes = cli.config_changes(parsed("--guide", "iaf", "--prior", "flow", "--flow-hidden",
                                        "32"), base)
    assert changes["model.guide.options.flow_hidden"] == 32
    assert changes["model.prior.options.flow_hidden"] == 32
    with pytest.raises(ConfigError, match="--guide-flows does not apply to the diagonal guide"):
        cli.config_changes(parsed("--guide-flows", "3"), base)
    # Flags left out change nothing, so the defaults (or a resumed run's settings) hold.
    assert dict(cli.config_changes(parsed(), base)) == {}


def test_part_option_flags_are_read_from_the_one_table_of_part_options():
    """PART_OPTION_KEYS gives the flags their names, help and targets; their types come from
    the defaults of the parts that take them (flow_hidden, whose parts default to None, from the
    table), and parse as they always did."""
    assert list(cli.OPTION_FLAGS) == list(PART_OPTION_KEYS)
    for dest, option_flag in cli.OPTION_FLAGS.items():
        assert option_flag.targets == PART_OPTION_KEYS[dest].targets
    kinds = {dest: option_flag.kind for dest, option_flag in cli.OPTION_FLAGS.items()}
    assert kinds.pop("hidden_dims")("8,4") == [8, 4]
    assert kinds == {"prior_components": int, "prior_flows": int, "flow_hidden": int,
                     "sigma": float, "min_scale": float, "guide_flows": int, "activation": str,
                     "num_particles": int}
    assert cli.OPTION_FLAGS["activation"].help == f"one of {ACTIVATIONS.names()}"
    assert cli.GENERAL_OPTIONS == ("hidden_dims", "activation", "num_particles")


# ---------------------------------------------------------------------------------------------
# Checkpoints of format version 1 (flat configurations), committed in tests/data

def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_version_1_checkpoints_load_with_their_settings_converted():
    checkpoint = load_checkpoint(os.path.join(LEGACY, "parts"))
    assert checkpoint["version"] == 1
    model = checkpoint["config"].model
    assert model.prior == PartSpec("mog", {"num_components": 3, "init_spread": 1.0})
    assert model.likelihood == PartSpec("gaussian", {"sigma": 0.2})
    assert model.guide == PartSpec("iaf", {"num_flows": 1, "context_dim": None,
                                           "flow_hidden": 8})
    assert model.architecture == PartSpec("mlp", {"hidden_dims": (8,), "activation": "relu"})
    assert checkpoint["config"].data.dataset == "synthetic"


#: flat configurations and the nested form version 1's conversion gave each, written out: every
#: part option goes to every chosen part that takes it, and a value that none takes is dropped
FLAT_CONVERSIONS = {
    "mog": ({"prior": "mog", "prior_components": 3}, {
        "data": {},
        "model": {"prior": {"name": "mog", "options": {"num_components": 3}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "vamp": ({"prior": "vamp", "prior_components": 7, "prior_flows": 2}, {
        "data": {},
        "model": {"prior": {"name": "vamp", "options": {"num_components": 7}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "flow prior": ({"prior": "flow", "prior_flows": 2, "flow_hidden": 16,
                    "prior_components": 5}, {
        "data": {},
        "model": {"prior": {"name": "flow", "options": {"num_flows": 2, "flow_hidden": 16}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "gaussian": ({"likelihood": "gaussian", "sigma": 0.2, "min_scale": 0.05}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "gaussian", "options": {"sigma": 0.2}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "gaussian-learned": ({"likelihood": "gaussian-learned", "sigma": 0.3, "min_scale": 0.05}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "gaussian-learned", "options": {"min_scale": 0.05}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "bernoulli drops sigma": ({"likelihood": "bernoulli", "sigma": 0.1, "min_scale": 0.05}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "iaf with flow_hidden": ({"guide": "iaf", "guide_flows": 1, "flow_hidden": 8}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "iaf", "options": {"num_flows": 1, "flow_hidden": 8}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "iaf without flow_hidden": ({"guide": "iaf", "guide_flows": 3, "flow_hidden": None}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "iaf", "options": {"num_flows": 3}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "flow prior and iaf guide": ({"prior": "flow", "guide": "iaf", "flow_hidden": 32,
                                  "guide_flows": 2, "prior_flows": 3}, {
        "data": {},
        "model": {"prior": {"name": "flow", "options": {"num_flows": 3, "flow_hidden": 32}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "iaf", "options": {"num_flows": 2, "flow_hidden": 32}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "standard prior and diagonal guide drop theirs": (
        {"prior": "standard", "guide": "diagonal", "prior_components": 3, "prior_flows": 2,
         "flow_hidden": 8, "guide_flows": 2}, {
            "data": {},
            "model": {"prior": {"name": "standard", "options": {}},
                      "likelihood": {"name": "bernoulli", "options": {}},
                      "guide": {"name": "diagonal", "options": {}},
                      "architecture": {"name": "mlp", "options": {}}},
            "training": {"objective": {"name": "elbo", "options": {}}}}),
    "conv architecture": ({"architecture": "conv", "hidden_dims": [32], "activation": "tanh"}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "conv",
                                   "options": {"hidden_dims": [32], "activation": "tanh"}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "default architecture": ({"z_dim": 4, "x_dim": 10, "hidden_dims": [16, 8]}, {
        "data": {},
        "model": {"z_dim": 4, "x_dim": 10,
                  "prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {"hidden_dims": [16, 8]}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
    "elbo": ({"objective": "elbo", "num_particles": 5}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {"num_particles": 5}}}}),
    "iwae": ({"objective": "iwae", "num_particles": 10, "num_epochs": 3}, {
        "data": {},
        "model": {"prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"num_epochs": 3,
                     "objective": {"name": "iwae", "options": {"num_particles": 10}}}}),
    # A user's parts get no flat option, and reading them imports nothing (no such module).
    "parts of a user's own": ({"prior": "no_such_module:Prior", "prior_components": 3,
                               "guide": "no_such_module:Guide", "flow_hidden": 8,
                               "guide_flows": 2}, {
        "data": {},
        "model": {"prior": {"name": "no_such_module:Prior", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "no_such_module:Guide", "options": {}},
                  "architecture": {"name": "mlp", "options": {}}},
        "training": {"objective": {"name": "elbo", "options": {}}}}),
}

#: the run configurations of the version-1 runs in tests/data/legacy_v1, converted
LEGACY_DATA = {"dataset": "synthetic", "data_dir": "data", "download": False,
               "binarize": "none", "num_validation": None, "synthetic_z_dim": 2,
               "synthetic_x_dim": 20, "synthetic_num_train": 300, "synthetic_seed": 0,
               "synthetic_prior": "standard"}
LEGACY_CONVERSIONS = {
    "parts": {
        "data": LEGACY_DATA,
        "model": {"z_dim": 2, "x_dim": 20, "image_shape": None,
                  "prior": {"name": "mog", "options": {"num_components": 3}},
                  "likelihood": {"name": "gaussian", "options": {"sigma": 0.2}},
                  "guide": {"name": "iaf", "options": {"num_flows": 1, "flow_hidden": 8}},
                  "architecture": {"name": "mlp",
                                   "options": {"hidden_dims": [8], "activation": "relu"}}},
        "training": {"num_epochs": 1, "batch_size": 100, "learning_rate": 0.001,
                     "kl_warmup_epochs": 0, "jit": False,
                     "objective": {"name": "elbo", "options": {"num_particles": 1}}},
        "seed": 0, "device": "cpu"},
    "run": {
        "data": LEGACY_DATA,
        "model": {"z_dim": 2, "x_dim": 20, "image_shape": None,
                  "prior": {"name": "standard", "options": {}},
                  "likelihood": {"name": "bernoulli", "options": {}},
                  "guide": {"name": "diagonal", "options": {}},
                  "architecture": {"name": "mlp",
                                   "options": {"hidden_dims": [8], "activation": "relu"}}},
        "training": {"num_epochs": 2, "batch_size": 100, "learning_rate": 0.001,
                     "kl_warmup_epochs": 0, "jit": False,
                     "objective": {"name": "elbo", "options": {"num_particles": 1}}},
        "seed": 0, "device": "cpu"},
}


def assert_same_nested(converted, expected):
    """Equal, and in the same order (which config.json and the reports show)."""
    assert converted == expected
    assert json.dumps(converted) == json.dumps(expected)


@pytest.mark.parametrize("case", FLAT_CONVERSIONS)
def test_version_1_configurations_convert_as_version_1_gave_them(case):
    flat, expected = FLAT_CONVERSIONS[case]
    assert_same_nested(from_flat(flat, takes_option), expected)
    if case != "parts of a user's own":   # (resolving imports the parts)
        assert resolve(flat) == resolve(expected)


@pytest.mark.parametrize("run", LEGACY_CONVERSIONS)
def test_the_version_1_runs_convert_as_version_1_gave_them(run):
    with open(os.path.join(LEGACY, run, "config.json")) as handle:
        flat = json.load(handle)
    assert_same_nested(from_flat(flat, takes_option), LEGACY_CONVERSIONS[run])


def test_a_flat_configuration_with_part_options_needs_the_registries():
    """Which part takes an option is the registries' to say, above models.base: without them
    (RunConfig.from_dict with no ``takes``) a flat configuration that sets part options is
    refused rather than guessed at; one without part options converts anywhere."""
    with pytest.raises(ConfigError, match=r"sets options of its parts \(sigma for the "
                       r"likelihood\).*inference\.build\.resolve"):
        RunConfig.from_dict({"likelihood": "gaussian", "sigma": 0.2})
    assert RunConfig.from_dict({"z_dim": 3, "prior": "mog"}).model.prior == PartSpec("mog")
    model, guide = build({"z_dim": 2, "x_dim": 5, "hidden_dims": [4], "prior": "mog",
                          "prior_components": 2})
    assert model.prior.num_components == 2


# float32 weights of -14 nats: CPUs with other vector instructions (AVX2, AVX-512) round their
# matrix products differently in the last bits (4e-8 seen), so 1e-6 rather than 1e-9.
@pytest.mark.parametrize("run, estimators, tolerance", [("run", "elbo,importance", 1e-6),
                                                        ("parts", "importance", 0.05)])
def test_version_1_runs_evaluate_to_the_numbers_that_version_gave(
        run, estimators, tolerance, tmp_path, monkeypatch):
    out = tmp_path / "eval.json"
    run_main("evaluate", os.path.join(LEGACY, run), "--estimator", estimators, "--num-samples",
             "50", "--num-data", "5", "--device", "cpu", "--out", out)
    then = read_csv(os.path.join(LEGACY, f"{run}_evaluation.csv"))
    now = read_csv(tmp_path / "eval.csv")
    # The same rows as then, followed by the recommended value of each point (added since).
    assert [row["estimator"] for row in now if row["estimator"] != "recommended"] == \
        [row["estimator"] for row in then]
    # The estimators now seed each chunk of points from the estimate's seed (so that several
    # processes give the numbers of one), so their draws are not version 1's. Drawn as version 1
    # drew them (one stream from the seed), the log weights of the loaded model give its
    # numbers. (The parts run has weights of -1300 nats, where float rounding shows in the last
    # digits.) Its mog prior is sampled once before the guide's draws (to find the plates), and
    # version 1 drew a mixture's samples as torch's MixtureSameFamily does, one from every
    # component: the same here, so that the guide's draws are version 1's.
    monkeypatch.setattr(DiagonalNormalMixture, "sample", dist.MixtureSameFamily.sample)
    model, guide, dataset, _, _ = load_run(os.path.join(LEGACY, run))
    x, _ = dataset.select("test", 5)
    for name in estimators.split(","):
        pyro.set_rng_seed(0)
        with torch.no_grad(), pyro.validation_enabled(False):
            log_weights = log_importance_weights(model, guide, x, 50).double()
        drawn = log_weights.mean(0) if name == "elbo" else \
            torch.logsumexp(log_weights, 0) - math.log(50)
        old = [float(row["estimate"]) for row in then if row["estimator"] == name]
        assert drawn.tolist() == pytest.approx(old, abs=tolerance)


def test_version_1_run_resumes(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(os.path.join(LEGACY, "run"), run)
    summary = run_main("train", "--out", run, "--resume", "--num-epochs", "3", "--no-progress")
    assert summary["epochs"] == 3
    # The version-1 code reported -13.825 for the same resumed run (tests/data/legacy_v1). Steps
    # no longer draw an unused random permutation, so the random stream, and with it the last
    # digits, differ; the optimizer state carried over (Pyro's per-parameter Adam, converted).
    assert summary["test_elbo"] == pytest.approx(-13.825, abs=0.05)
    assert load_checkpoint(str(run / "checkpoint.pt"))["version"] == 2
