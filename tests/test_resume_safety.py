"""Resuming a run folder: no path of --resume imports code the user did not allow, the lock
cannot be turned against the user's files, a file of another run is refused, and every damaged
entry of a checkpoint gets one line that names it."""

import json
import os
import shutil
import sys

import pytest
import torch

from conftest import TINY, refused, run_main
from inference.checkpoint import BEST, LAST, load_checkpoint
from inference.run_folder import LOCK, RunFolder, RunFolderError


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def edit(path, **entries):
    """Rewrite the checkpoint ``path`` with ``entries`` replaced."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.update(entries)
    torch.save(checkpoint, path)
    return checkpoint


def evil_module(folder, name, sentinel):
    """A module ``name`` in ``folder`` that leaves ``sentinel`` when it is imported."""
    (folder / f"{name}.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\nfrom models.priors import Prior\n\n\n"
        "class Evil(Prior):\n    pass\n")


# ---------------------------------------------------------------------------------------------
# 1. Code runs only where the user allowed it

def test_resume_never_imports_a_module_that_best_pt_names(run_copy, tmp_path, capsys,
                                                          monkeypatch):
    sentinel = tmp_path / "RAN"
    evil_module(tmp_path, "helpers_resume", sentinel)
    checkpoint = torch.load(run_copy / BEST, weights_only=True)
    checkpoint["config"]["model"]["prior"] = {"name": "helpers_resume:Evil", "options": {}}
    torch.save(checkpoint, run_copy / BEST)
    monkeypatch.chdir(tmp_path)      # the module is importable from the working directory
    line = refused(capsys, "train", "--out", run_copy, "--resume", "--num-epochs", "3")
    assert "belongs to another run" in line
    assert not sentinel.exists() and "helpers_resume" not in sys.modules


def test_a_checkpoint_in_a_subfolder_of_the_run_never_imports_from_the_run(
        run_copy, tmp_path, capsys, monkeypatch):
    sentinel = tmp_path / "RAN"
    evil_module(run_copy, "helpers_inside", sentinel)
    (run_copy / "ckpts").mkdir()
    shutil.copy(run_copy / BEST, run_copy / "ckpts" / BEST)
    checkpoint = torch.load(run_copy / "ckpts" / BEST, weights_only=True)
    checkpoint["config"]["model"]["prior"] = {"name": "helpers_inside:Evil", "options": {}}
    torch.save(checkpoint, run_copy / "ckpts" / BEST)
    monkeypatch.chdir(run_copy)      # the run folder is the working directory
    line = refused(capsys, "evaluate", os.path.join("ckpts", BEST), "--num-data", "2",
                   "--trust-run")
    assert "would import module 'helpers_inside' from the run folder" in line
    assert not sentinel.exists() and "helpers_inside" not in sys.modules


def test_a_trusted_module_beside_the_run_folder_is_still_imported(run_copy, tmp_path,
                                                                  monkeypatch):
    """The rule refuses only the run's own folder: the user's module next to it loads."""
    sentinel = tmp_path / "RAN"
    evil_module(tmp_path, "helpers_mine", sentinel)
    checkpoint = torch.load(run_copy / BEST, weights_only=True)
    checkpoint["config"]["model"]["prior"] = {"name": "helpers_mine:Evil", "options": {}}
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    torch.save(checkpoint, tmp_path / "runs" / "mine" / BEST)
    monkeypatch.chdir(tmp_path)
    loaded = load_checkpoint(os.path.join("runs", "mine"), trust=True)
    assert loaded["config"].model.prior.name == "helpers_mine:Evil" and sentinel.exists()
    sys.modules.pop("helpers_mine", None)


# ---------------------------------------------------------------------------------------------
# 2. The lock file is the run's own

def test_a_symlinked_lock_is_replaced_without_touching_its_target(run_copy, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's words\n")
    (run_copy / LOCK).unlink()
    os.symlink(victim, run_copy / LOCK)
    run_main("train", "--out", run_copy, "--resume", "--num-epochs", "3", "--no-progress")
    assert victim.read_text() == "the user's words\n"
    assert not os.path.islink(run_copy / LOCK)
    assert load_checkpoint(str(run_copy / LAST))["epoch"] == 3


def test_a_hard_linked_lock_is_refused_and_its_file_left_alone(run_copy, tmp_path, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's words\n")
    (run_copy / LOCK).unlink()
    os.link(victim, run_copy / LOCK)
    line = refused(capsys, "train", "--out", run_copy, "--resume", "--num-epochs", "3")
    assert "is a hard link to another file" in line
    assert victim.read_text() == "the user's words\n"
    (run_copy / LOCK).unlink()
    os.mkfifo(run_copy / LOCK)      # opening it to write would block: refused at once
    with pytest.raises(RunFolderError, match="is not a plain file"):
        with RunFolder(str(run_copy)):
            pass
    (run_copy / LOCK).unlink()
    os.symlink(tmp_path / "nowhere", run_copy / LOCK)   # a dangling link is replaced too
    with RunFolder(str(run_copy)):
        assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------------------------------
# 4. Every file of a run carries the run's identity; another run's files are refused

@pytest.fixture(scope="module")
def other_seed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("other") / "run"
    run_main("train", *TINY, "--num-epochs", "2", "--out", out, "--seed", "1")
    return out


def test_every_file_of_a_run_carries_its_identity(tiny_run):
    run = load_checkpoint(str(tiny_run / LAST))["run"]
    assert len(run) == 32 and load_checkpoint(str(tiny_run / BEST))["run"] == run
    assert json.loads((tiny_run / "config.json").read_text())["run"] == run
    assert json.loads((tiny_run / "summary.json").read_text())["run"] == run
    rows = (tiny_run / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith(",run") and all(row.endswith("," + run) for row in rows[1:])


@pytest.mark.parametrize("name", [BEST, "metrics.csv", "summary.json", "config.json"])
def test_resume_refuses_a_file_of_another_run_of_the_same_model(
        name, run_copy, other_seed_run, capsys):
    before = (other_seed_run / name).read_bytes()
    shutil.copy(other_seed_run / name, run_copy / name)
    line = refused(capsys, "train", "--out", run_copy, "--resume", "--num-epochs", "3")
    assert "belongs to another run" in line
    assert (run_copy / name).read_bytes() == before       # nothing was overwritten


@pytest.mark.parametrize("name", [BEST, "metrics.csv"])
def test_resume_refuses_a_file_of_another_run_without_identities(
        name, run_copy, other_seed_run, capsys):
    """Files written before runs had identities are told apart by their numbers."""
    foreign = run_copy / f"foreign-{name}"
    shutil.copy(other_seed_run / name, foreign)
    if name == BEST:
        checkpoint = torch.load(foreign, weights_only=True)
        del checkpoint["run"]
        torch.save(checkpoint, foreign)
    else:
        rows = foreign.read_text().splitlines()
        foreign.write_text("\n".join(row.rsplit(",", 1)[0] for row in rows) + "\n")
    os.replace(foreign, run_copy / name)
    line = refused(capsys, "train", "--out", run_copy, "--resume", "--num-epochs", "3")
    assert "belongs to another run" in line or "does not hold the history" in line


def test_a_run_without_identities_resumes_and_takes_one(run_copy):
    """A run folder of an earlier version: its checkpoints, config.json, metrics.csv and
    summary.json have no identity; resuming gives the run one, in every file."""
    for name in (LAST, BEST):
        checkpoint = torch.load(run_copy / name, weights_only=True)
        del checkpoint["run"]
        torch.save(checkpoint, run_copy / name)
    for name in ("config.json", "summary.json"):
        data = json.loads((run_copy / name).read_text())
        del data["run"]
        (run_copy / name).write_text(json.dumps(data))
    rows = (run_copy / "metrics.csv").read_text().splitlines()
    (run_copy / "metrics.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    summary = run_main("train", "--out", run_copy, "--resume", "--num-epochs", "3",
                       "--no-progress")
    assert len(summary["run"]) == 32
    assert load_checkpoint(str(run_copy / LAST))["run"] == summary["run"]


# ---------------------------------------------------------------------------------------------
# 5. A damaged entry of the checkpoint gets one line that names it

@pytest.mark.parametrize("entry, value, message", [
    ("best", {}, "damaged 'best' entry"),
    ("best", {"epoch": 7, "validation_elbo": -1.0}, "damaged 'best' entry"),
    ("metrics", ["junk"], "damaged 'metrics' entry"),
    ("metrics", [], "damaged 'metrics' entry: 0 rows of history for 2 finished epochs"),
    ("rng", {}, "damaged 'rng' entry"),
    ("rng", {"torch": torch.zeros(3, dtype=torch.uint8)}, "damaged 'rng' entry"),
    ("optimizer", {}, "damaged 'optimizer' entry: the optimizer's state is empty"),
    ("optimizer", {"optimizer": "torch.optim.Adam", "names": ["x"], "state": {}},
     "damaged 'optimizer' entry"),
    ("optimizer", {"junk": 1}, "damaged 'optimizer' entry"),
    ("epoch", 0, "damaged 'epoch' entry"),
])
def test_a_damaged_checkpoint_entry_gets_one_line_naming_it(entry, value, message, run_copy,
                                                            capsys):
    edit(run_copy / LAST, **{entry: value})
    line = refused(capsys, "train", "--out", run_copy, "--resume", "--num-epochs", "3")
    assert message in line


def test_an_optimizer_state_of_the_wrong_sizes_is_refused(run_copy, capsys):
    checkpoint = torch.load(run_copy / LAST, weights_only=True)
    state = checkpoint["optimizer"]["state"]["state"]
    first = next(iter(state))
    state[first]["exp_avg"] = torch.zeros(3, 3, 3)
    torch.save(checkpoint, run_copy / LAST)
    line = refused(capsys, "train", "--out", run_copy, "--resume", "--num-epochs", "3")
    assert "damaged 'optimizer' entry" in line and "has shape (3, 3, 3)" in line
