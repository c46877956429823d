"""The life of a training run from Python (inference.run_life), without the command line: a run
stopped after one epoch and resumed to two ends where an uninterrupted two-epoch run ends, and
the other processes of a group take the first one's opening of the folder, or its refusal."""

import json
import os

import pytest
import torch

from inference.checkpoint import load_checkpoint
from inference.distributed import ProcessGroup
from inference.run_life import open_training_run
from models.base.config import ConfigError

#: the tiny setting of tests/test_resume_safety.py, as configuration changes
TINY = {"data.dataset": "synthetic", "data.synthetic_num_train": 300,
        "data.synthetic_x_dim": 20, "model.z_dim": 2,
        "model.architecture.options.hidden_dims": [8], "training.batch_size": 100,
        "device": "cpu"}


def train(out, num_epochs, resume=False):
    with open_training_run(out, dict(TINY, **{"training.num_epochs": num_epochs}),
                           resume=resume, log=lambda *_: None) as run:
        return run.how, run.fit(progress=False, log=lambda *_: None)


def test_a_run_resumed_from_python_ends_where_an_uninterrupted_one_ends(tmp_path):
    how, whole = train(tmp_path / "whole", 2)
    assert how == "new" and whole["epochs"] == 2
    assert train(tmp_path / "split", 1)[1]["epochs"] == 1
    how, split = train(tmp_path / "split", 2, resume=True)
    assert how == "resume" and split["epochs"] == 2
    assert split["test_elbo"] == whole["test_elbo"]
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("whole", "split"))
    assert a["config"] == b["config"]
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)
    # The run keeps its identity across the resume, in every file.
    with open(tmp_path / "split" / "config.json") as handle:
        assert json.load(handle)["run"] == b["run"]


def test_a_resumed_run_refuses_a_change_of_its_settings_from_python(tmp_path):
    train(tmp_path / "run", 1)
    changes = dict(TINY, **{"training.num_epochs": 2, "model.z_dim": 3})
    with pytest.raises(ConfigError, match="model.z_dim 3 differs from the resumed run's 2"):
        with open_training_run(tmp_path / "run", changes, resume=True, log=lambda *_: None):
            pass


class Recorded(ProcessGroup):
    """Rank ``rank`` of two processes whose broadcasts go through ``box`` (rank 0 first)."""

    def __init__(self, rank, box):
        super().__init__(rank, 2, 0, torch.device("cpu"))
        self.box = box

    def broadcast(self, value):
        if self.is_main:
            self.box.append(value)
        return self.box[0]


def test_the_other_processes_take_the_first_ones_opening(tmp_path):
    train(tmp_path / "run", 1)
    box, changes = [], dict(TINY, **{"training.num_epochs": 2})
    with open_training_run(tmp_path / "run", changes, resume=True, group=Recorded(0, box),
                           log=lambda *_: None) as first:
        pass
    # The others never touch a folder: theirs may be on a machine without it.
    elsewhere = tmp_path / "elsewhere"
    with open_training_run(elsewhere, changes, resume=True, group=Recorded(1, box)) as second:
        assert (second.how, second.config) == ("resume", first.config)
        assert second.run_id == first.run_id
        assert second.checkpoint["run"] == first.checkpoint["run"]
        for name, tensor in first.model.state_dict().items():
            assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert not os.path.exists(elsewhere)
    # A refusal in the first process stops the others with its message, not a wait.
    box.clear()
    refused = dict(changes, **{"model.z_dim": 3})
    with pytest.raises(ConfigError, match="differs from the resumed run's"):
        with open_training_run(tmp_path / "run", refused, resume=True, group=Recorded(0, box)):
            pass
    with pytest.raises(ValueError, match=r"process 1 of 2 stops: the first process could not "
                                         r"open the run folder \(model.z_dim 3 differs"):
        with open_training_run(tmp_path / "run", refused, resume=True, group=Recorded(1, box)):
            pass
