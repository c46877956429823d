"""A user's own prior and guide, written in a folder outside the package exactly as the
extension contract (docs/extending.md) says, through Python and through every script."""

import json
import os
import re
import sys

import pyro.distributions as dist
import pytest
import torch

from conftest import ROOT, SMALL, refused, run_main, small_config
from inference.build import build
from models import ConfigError, build_model


def documented_parts():
    """The user's module exactly as docs/extending.md shows it (the block headed my_parts.py),
    plus two classes that break the contract."""
    with open(os.path.join(ROOT, "docs", "extending.md")) as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    (module,) = [block for block in blocks if block.startswith("# my_parts.py")]
    return module + BROKEN


BROKEN = '''

class NotAModule:
    def __init__(self, z_dim):
        self.z_dim = z_dim


class WrongSize(Prior):
    def __init__(self, z_dim):
        super().__init__(z_dim + 1)

    def forward(self):
        return dist.Normal(torch.zeros(self.z_dim), 1.0).to_event(1)
'''


@pytest.fixture
def user_folder(tmp_path, monkeypatch, request):
    """A folder outside the package holding the user's module (a fresh name per test), as the
    working directory."""
    name = f"user_parts_{request.node.name.split('[')[0][5:]}"
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / f"{name}.py").write_text(documented_parts())
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    yield folder, name
    sys.modules.pop(name, None)


def test_user_prior_and_guide_from_python(user_folder):
    _, module = user_folder
    config = small_config(prior=f"{module}:StudentT", prior_options={"df": 3},
                          guide=f"{module}:TinyGuide")
    assert config.model.prior.options == {"df": 3.0}
    model, guide = build(config)
    z = torch.randn(4, 2)
    expected = dist.StudentT(3.0, 0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(model.prior().log_prob(z), expected, atol=1e-5)
    assert guide.distribution(torch.rand(5, 50)).batch_shape == (5,)


def test_user_parts_that_break_the_contract_are_refused(user_folder):
    _, module = user_folder
    with pytest.raises(ConfigError, match=f"the prior '{module}:NotAModule' must be a class "
                       "derived from models.priors.Prior"):
        build_model(small_config(prior=f"{module}:NotAModule"))
    with pytest.raises(ConfigError, match="has no 'Missing'"):
        small_config(prior=f"{module}:Missing")
    with pytest.raises(ConfigError, match="has z_dim 3, expected 2"):
        build_model(small_config(prior=f"{module}:WrongSize"))
    with pytest.raises(ConfigError, match=r"the .*StudentT prior has no option 'dof' "
                       r"\(did you mean 'df'\?\)"):
        small_config(prior=f"{module}:StudentT", prior_options={"dof": 3})
    with pytest.raises(ConfigError, match="must be a class derived from inference.guides.Guide"):
        small_config(guide=f"{module}:StudentT")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        small_config(guide="no_such_module:Guide")


def test_user_parts_train_resume_evaluate_and_explore_through_the_scripts(user_folder, capsys):
    folder, module = user_folder
    out = folder / "run"
    run_main("train", *SMALL, "--prior", f"{module}:StudentT", "--prior-option", "df=3",
             "--guide", f"{module}:TinyGuide", "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["prior"] == {"name": f"{module}:StudentT", "options": {"df": 3.0}}
    assert config["model"]["guide"] == {"name": f"{module}:TinyGuide", "options": {}}
    # Opening the run imports the user's module again: only when the user says so.
    line = refused(capsys, "train", "--out", out, "--resume", "--num-epochs", "2")
    assert "names code to import" in line and "--trust-run" in line
    summary = run_main("train", "--out", out, "--resume", "--num-epochs", "2", "--no-progress",
                       "--prior", f"{module}:StudentT", "--guide", f"{module}:TinyGuide")
    assert summary["epochs"] == 2
    line = refused(capsys, "train", "--out", out, "--resume", "--trust-run", "--prior-option",
                   "df=4")
    assert "--prior-option df=4 differs from the resumed run's 3.0" in line
    report = run_main("evaluate", out, "--num-samples", "20", "--num-data", "10", "--trust-run")
    assert [s["estimator"] for s in report["estimators"]] == ["elbo", "importance", "mixture"]
    facts = run_main("explore", out, "--out", folder / "figures", "--num-data", "100",
                     "--convergence-k", "1,10", "--ais-steps", "3", "--eval-data", "10",
                     "--num-samples", "10", "--no-progress", "--trust-run")
    assert "empirical quantiles of the run's prior (StudentT" in facts["manifold_grid"]
    assert (folder / "figures" / "report.html").is_file()


def documented_block(first_line):
    with open(os.path.join(ROOT, "docs", "extending.md")) as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    (code,) = [block for block in blocks if block.startswith(first_line)]
    return code


def test_documented_estimator_runs_through_the_scripts_by_its_module_name(
        monkeypatch, tmp_path, capsys):
    """docs/extending.md's estimator, in a file of the user's own: named module:function on
    evaluate.py's command line, as from the shell (no registration runs first); its module is
    imported only then. The documented registration gives it a short name in Python."""
    from evaluation.estimators import ESTIMATORS

    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "my_estimators.py").write_text(documented_block("# my_estimators.py"))
    monkeypatch.chdir(folder)
    monkeypatch.setattr(ESTIMATORS, "_entries", dict(ESTIMATORS._entries))
    monkeypatch.delitem(sys.modules, "my_estimators", raising=False)
    run = tmp_path / "run"
    run_main("train", "--dataset", "synthetic", "--synthetic-num-train", "200", "--z-dim", "2",
             "--hidden-dims", "8", "--num-epochs", "1", "--no-progress", "--device", "cpu",
             "--out", run)
    run_main("evaluate", run, "--num-samples", "5", "--num-data", "2")
    assert "my_estimators" not in sys.modules          # imported only where named
    # Alone, and with a flag of an option it shares with the project's estimators.
    evaluate = ["--num-samples", "30", "--num-data", "4", "--max-batch-elements", "60"]
    report = run_main("evaluate", run, "--estimator", "my_estimators:tempered", *evaluate)
    (by_module,) = report["estimators"]
    assert by_module["estimator"] == "tempered"
    assert "tempered" not in ESTIMATORS
    capsys.readouterr()
    line = refused(capsys, "evaluate", run, "--estimator", "my_estimators:Estimate")
    assert "the estimator 'my_estimators:Estimate' must be a function" in line
    line = refused(capsys, "evaluate", run, "--estimator", "nowhere:tempered")
    assert "cannot import module 'nowhere' for the estimator 'nowhere:tempered'" in line
    line = refused(capsys, "evaluate", run, "--estimator", "tempred")
    assert line.endswith("or module:function for your own")

    monkeypatch.syspath_prepend(str(folder))
    exec(documented_block("from evaluation.estimators import ESTIMATORS"), {})
    report = run_main("evaluate", run, "--estimator", "tempered,importance", *evaluate)
    tempered, importance = report["estimators"]
    # The same weights (same seed) under another name: the same estimate.
    assert tempered["log_px_mean"] == importance["log_px_mean"] == by_module["log_px_mean"]
    sys.modules.pop("my_estimators", None)
