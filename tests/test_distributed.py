"""Several processes (torch.distributed, gloo on the CPU): training with DistributedDataParallel
and sharded evaluation that gives the per-point numbers of one process."""

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import types

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing

from conftest import ROOT, load_script, run_main, small_config
from evaluation.estimators import ESTIMATORS
from inference.build import build
from inference.checkpoint import load_checkpoint
from inference import distributed
from inference.distributed import ProcessGroup
from inference.log_weights import chunk_seeds
from inference.run_life import load_run
from inference.training import TrainingStep, forget_stale_params
from inference.training.gradients import DistributedGradients

TINY_TRAINING = ["--dataset", "mnist-subset", "--z-dim", "2", "--hidden-dims", "16",
                 "--batch-size", "250", "--no-progress", "--device", "cpu"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_two_processes(target, *args, timeout=120):
    """Run ``target(rank, 2, port, *args, results)`` in two spawned processes joined by gloo on a
    free port; {rank: what each put into ``results``} once both ended well."""
    context = torch.multiprocessing.get_context("spawn")
    port = free_port()
    with context.Manager() as manager:
        results = manager.dict()
        processes = [context.Process(target=target, args=(rank, 2, port, *args, results))
                     for rank in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout)
        assert all(process.exitcode == 0 for process in processes)
        return dict(results)


def torchrun(nproc, script, *args, timeout=240, env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", os.path.join(ROOT, "scripts", script),
               *map(str, args)]
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=environment)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    run_main("train", *TINY_TRAINING, "--num-epochs", "1", "--out", out)
    return out


# ---------------------------------------------------------------------------------------------
# Pure parts

@pytest.mark.parametrize("num_items, step, size", [(37, 5, 2), (10, 1, 3), (3, 5, 4), (0, 2, 2),
                                                   (100, 7, 3)])
def test_shares_are_whole_blocks_that_tile_the_items_in_order(num_items, step, size):
    parts = [ProcessGroup(rank, size, 0, torch.device("cpu")).share(num_items, step)
             for rank in range(size)]
    assert [i for part in parts for i in range(num_items)[part]] == list(range(num_items))
    for part in parts:
        assert part.start % step == 0 or part.start == num_items
    lengths = [part.stop - part.start for part in parts]
    assert max(lengths) - min(lengths) <= step


@pytest.fixture
def no_nccl_settings(monkeypatch):
    """None of NCCL's error settings in the environment, and any this test sets undone."""
    for name in distributed.NCCL_ERROR_SETTINGS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _joined_as(monkeypatch, device_name):
    """from_environment(device_name) as rank 0 of 2 on a machine with a GPU (faked): the
    backend and the TORCH_NCCL_BLOCKING_WAIT that the process group would be made with."""
    made = []
    monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout: made.append(
                            (backend, os.environ.get("TORCH_NCCL_BLOCKING_WAIT"))))
    group = distributed.from_environment(device_name)
    assert (group.rank, group.size) == (0, 2)
    return made[0]


def test_nccl_collectives_are_made_to_raise_where_they_fail(monkeypatch, no_nccl_settings):
    """Set before the group is made, so that a lost process or a timeout raises in the
    collective that waits (and the process stops with one line), not in NCCL's watchdog."""
    assert _joined_as(monkeypatch, "cuda") == ("nccl", "1")


def test_gloo_and_a_users_own_nccl_setting_are_left_alone(monkeypatch, no_nccl_settings):
    assert _joined_as(monkeypatch, "cpu") == ("gloo", None)
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    assert _joined_as(monkeypatch, "cuda") == ("nccl", None)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def test_a_failed_nccl_collective_stops_the_process_with_one_line(monkeypatch):
    """What NCCL raises when a collective outlasts the timeout, in a collective of the group
    and in the averaging of the gradients, becomes ProcessGroupFailed."""
    error = torch.distributed.DistBackendError(
        "[Rank 0] Work WorkNCCL(SeqNum=12, OpType=ALLREDUCE, NumelIn=1)\n timed out in "
        "blocking wait (TORCH_NCCL_BLOCKING_WAIT=1).")

    def lost(*args, **kwargs):
        raise error

    group = ProcessGroup(0, 2, 0, torch.device("cpu"))
    monkeypatch.setattr(torch.distributed, "all_reduce", lost)
    with pytest.raises(distributed.ProcessGroupFailed,
                       match=r"^process 0 of 2 lost the others while adding up results "
                             r"\(\[Rank 0\] Work WorkNCCL\(.*\) timed out in blocking wait") \
            as failure:
        group.sum(torch.zeros(2))
    assert "\n" not in str(failure.value) and failure.value.__cause__ is error
    config = small_config(jit=False)
    model, guide = build(config)
    step = TrainingStep(model, guide, config.training, log=lambda *_: None)
    step.gradients = DistributedGradients(step.loss, group, parallel=lost)   # as DDP raises
    with pytest.raises(distributed.ProcessGroupFailed, match="while averaging gradients"):
        step(torch.zeros(4, 50), 100, 1.0, 0.5)


def test_minibatch_shares_split_each_global_minibatch():
    config = small_config(synthetic_num_train=23)
    from models.data import load_dataset
    split = load_dataset(config, "cpu").train
    order = [torch.Generator().manual_seed(5) for _ in range(3)]
    parts = [list(split.batches(10, shuffle=True, generator=order[rank], share=(rank, 3)))
             for rank in range(3)]
    whole = list(split.batches(10, shuffle=True, generator=torch.Generator().manual_seed(5)))
    for index, batch in enumerate(whole):
        pieces = [parts[rank][index] for rank in range(3)]
        assert sum(fraction for _, fraction in pieces) == pytest.approx(1.0)
        joined = torch.cat([x for x, fraction in pieces if fraction > 0])
        assert torch.equal(joined, batch)
    # The last minibatch holds 3 points: one each.
    assert [parts[rank][-1][1] for rank in range(3)] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("name, options", [("importance", {}), ("elbo", {}), ("prior", {}),
                                           ("mixture", {}),
                                           ("ais", {"ais_steps": 3, "ais_leapfrog": 2})])
def test_a_points_numbers_do_not_depend_on_the_part_of_the_data_that_holds_it(name, options):
    """Scoring the data in parts, each at its offset, gives the numbers of scoring it whole."""
    config = small_config(x_dim=12, z_dim=2)
    model, guide = build(config)
    x = torch.bernoulli(torch.full((11, 12), 0.4))
    function = ESTIMATORS.get(name)
    budget = 3 * 4   # chunks of 3 points of K = 4 samples

    def scored(start, stop):
        with torch.no_grad(), pyro.validation_enabled(False), chunk_seeds(1234, start):
            return function(model, guide, x[start:stop], 4, max_batch_elements=budget,
                            **options)

    whole = scored(0, 11)
    parts = [scored(0, 6), scored(6, 9), scored(9, 11)]
    for field in ("estimate", "stderr"):
        joined = torch.cat([getattr(part, field) for part in parts])
        assert torch.equal(joined, getattr(whole, field)), field
    # And another seed gives other numbers.
    with torch.no_grad(), chunk_seeds(99, 0):
        other = function(model, guide, x, 4, max_batch_elements=budget, **options)
    assert not torch.equal(other.estimate, whole.estimate)


# ---------------------------------------------------------------------------------------------
# Training: the gradient of two processes is the gradient of one

def point_distribution(guide, x):
    """q(z | x) = delta(z_loc(x)): no noise, so that one and two processes see the same
    numbers."""
    z_loc, _ = guide.encode(x)
    return dist.Delta(z_loc).to_event(1)


def _gradients(x, num_data, rank=None, size=None, jit=False, objective="elbo", prior="standard"):
    """The gradients of one training step on ``x`` (this process's share of it in a group)."""
    pyro.clear_param_store()
    forget_stale_params()
    torch.manual_seed(0)
    config = small_config(x_dim=x.shape[1], z_dim=3, jit=jit, objective=objective, prior=prior,
                          objective_options={"num_particles": 2} if objective == "iwae" else None,
                          prior_options={"num_components": 4} if prior == "mog" else None)
    model, guide = build(config)
    guide.distribution = types.MethodType(point_distribution, guide)
    group = None if rank is None else ProcessGroup(rank, size, 0, torch.device("cpu"))
    step = TrainingStep(model, guide, config.training, log=lambda *_: None, group=group)
    if group is None:
        step(x, num_data)
    else:
        first, last = rank * len(x) // size, (rank + 1) * len(x) // size
        step(x[first:last], num_data, 1.0, (last - first) / len(x))
    return [p.grad.clone() for p in list(model.parameters()) + list(guide.parameters())]


SETTINGS = ({"jit": False}, {"jit": True}, {"objective": "iwae", "prior": "mog"})


def _worker(rank, size, port, x, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size)
    try:
        results[rank] = [_gradients(x, 1000, rank, size, **settings) for settings in SETTINGS]
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_gradient_of_one():
    """For the plain and the JIT-compiled loss, and for the IWAE bound with a mixture prior."""
    torch.manual_seed(3)
    x = torch.bernoulli(torch.full((9, 20), 0.3))   # 9 points: shares of 4 and 5
    gradients = in_two_processes(_worker, x)
    for index, settings in enumerate(SETTINGS):
        expected = _gradients(x, 1000, **settings)
        for rank in range(2):
            for got, want in zip(gradients[rank][index], expected):
                # float32 sums of per-point gradients of size 10-100, added in another order
                # by two processes: they agree to about 1e-5 relative; the gradient of one
                # share alone (below) differs by more than 1e-3.
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), settings
        # Not the gradient of one share alone.
        alone = _gradients(x[:4], 1000, **settings)
        assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(alone, expected))


class _Torch21Parallel:
    """DistributedDataParallel as torch 2.1, the oldest torch the package accepts, takes it:
    the parameters of its ``__init__``, copied from torch 2.1 (no ``forward_sync_buffers``)."""

    def __init__(self, module, device_ids=None, output_device=None, dim=0,
                 broadcast_buffers=True, process_group=None, bucket_cap_mb=25,
                 find_unused_parameters=False, check_reduction=False,
                 gradient_as_bucket_view=False, static_graph=False):
        self.module = module
        self.given = {"device_ids": device_ids, "broadcast_buffers": broadcast_buffers}


class _Torch213Parallel:
    """The buffer keywords of DistributedDataParallel from torch 2.13 on."""

    def __init__(self, module, device_ids=None, broadcast_buffers=None, init_sync=True,
                 forward_sync_buffers=None):
        self.module = module
        self.given = {"device_ids": device_ids, "broadcast_buffers": broadcast_buffers,
                      "forward_sync_buffers": forward_sync_buffers}


@pytest.mark.parametrize("wrapper", [_Torch21Parallel, _Torch213Parallel],
                         ids=["torch2.1", "torch2.13"])
def test_the_training_step_wraps_its_loss_on_every_torch_the_package_accepts(
        monkeypatch, wrapper):
    """setup.cfg accepts torch>=2.1: a keyword of a later torch would be a TypeError there. On
    torch before 2.13, rank 0's buffers are broadcast once and then never again, which is what
    forward_sync_buffers=False does from 2.13 on."""
    broadcast = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", wrapper)
    monkeypatch.setattr(torch.distributed, "broadcast",
                        lambda tensor, src: broadcast.append((tensor, src)))
    config = small_config()
    model, guide = build(config)
    step = TrainingStep(model, guide, config.training, log=pytest.fail,
                        group=ProcessGroup(0, 2, 0, torch.device("cpu")))
    assert isinstance(step.parallel, wrapper)
    assert set(step.parallel.module.parameters()) == set(step.params)
    buffers = list(step.parallel.module.buffers())
    assert len(buffers) >= 2                     # the standard prior's loc and scale
    if wrapper is _Torch21Parallel:
        assert step.parallel.given == {"device_ids": None, "broadcast_buffers": False}
        assert [(id(tensor), src) for tensor, src in broadcast] == [(id(b), 0) for b in buffers]
    else:
        # broadcast_buffers is left out: torch 2.13 warns that it is deprecated.
        assert step.parallel.given == {"device_ids": None, "broadcast_buffers": None,
                                       "forward_sync_buffers": False}
        assert broadcast == []


# ---------------------------------------------------------------------------------------------
# Scripts under torchrun

@pytest.mark.slow
def test_a_two_process_run_writes_one_run_folder_and_resumes_in_one(tmp_path):
    out = tmp_path / "run"
    finished = torchrun(2, "train.py", *TINY_TRAINING, "--num-epochs", "2", "--out", out)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "in 2 processes" in finished.stdout
    assert sorted(os.listdir(out)) == [".lock", "best.pt", "checkpoint.pt", "config.json",
                                       "elbo.png", "metrics.csv", "summary.json"]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and len(checkpoint["metrics"]) == 2
    summary = run_main("train", *TINY_TRAINING, "--num-epochs", "3", "--out", out, "--resume")
    assert summary["epochs"] == 3
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 3


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process_exactly(tmp_path, tiny_run):
    # K = 24 weights per point give a Pareto fit (k-hat needs 20), in chunks of 2 points.
    flags = ["--estimator", "importance,elbo,prior,ais", "--num-samples", "24",
             "--ais-chains", "3", "--ais-steps", "4", "--num-data", "23",
             "--max-batch-elements", "48", "--no-progress", "--device", "cpu"]
    # One thread per process in all (the thread count changes the last bits of a sum); the
    # single process runs here, in this test's process.
    with one_thread():
        run_main("evaluate", tiny_run, *flags, "--out", tmp_path / "1.json")
    # Two processes share 23 points unevenly (12 and 11), in chunks that split differently.
    finished = torchrun(2, "evaluate.py", tiny_run, *flags, "--out", tmp_path / "2.json")
    assert finished.returncode == 0, finished.stderr[-3000:]
    one = (tmp_path / "1.csv").read_bytes()
    assert one == (tmp_path / "2.csv").read_bytes()
    assert one.count(b"\n") == 1 + 5 * 23   # four estimators and the recommended value
    # The per-point k-hats among them (written in full precision), bit for bit.
    khats = [torch.tensor([float(row["khat"]) for row in read_csv_rows(tmp_path / f"{g}.csv")
                           if row["estimator"] == "importance"], dtype=torch.float64)
             for g in (1, 2)]
    assert torch.isfinite(khats[0]).all() and khats[0].numel() == 23
    assert torch.equal(khats[0], khats[1])
    # compare.py too: its table (all but the seconds) and its paired differences.
    flags = ["--estimator", "importance,elbo", "--num-samples", "3,6", "--num-data", "23",
             "--max-batch-elements", "24", "--no-progress", "--device", "cpu"]
    with one_thread():
        run_main("compare", tiny_run, tiny_run, *flags, "--out", tmp_path / "compare1")
    finished = torchrun(2, "compare.py", tiny_run, tiny_run, *flags, "--out",
                        tmp_path / "compare2")
    assert finished.returncode == 0, finished.stderr[-3000:]
    tables = [[{key: value for key, value in row.items() if key != "seconds"}
               for row in read_csv_rows(tmp_path / f"compare{processes}" / "comparison.csv")]
              for processes in (1, 2)]
    assert tables[0] == tables[1] and len(tables[0]) == 8
    assert (tmp_path / "compare1" / "paired.csv").read_bytes() == \
        (tmp_path / "compare2" / "paired.csv").read_bytes()


SEEN_BY_RANK_0 = ["--num-data", "11", "--max-batch-elements", "48", "--no-progress",
                  "--device", "cpu"]


def _only_rank_0_sees_the_run(rank, size, port, run, tmp, results):
    """Open, evaluate and compare ``run``, which only rank 0 can see: the others are given a
    path of the same name on a "machine" where nothing is."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size)
    try:
        group = ProcessGroup(rank, size, 0, torch.device("cpu"))
        path = run if rank == 0 else os.path.join(tmp, "elsewhere", os.path.basename(run))
        model, guide, _, config, checkpoint = load_run(path, group=group)
        evaluate, compare = load_script("evaluate"), load_script("compare")
        evaluate.evaluate(evaluate.make_parser().parse_args(
            [path, "--estimator", "importance,elbo", "--num-samples", "24", *SEEN_BY_RANK_0,
             "--out", os.path.join(tmp, "2.json")]), group)
        compare.compare(compare.make_parser().parse_args(
            [path, path, "--estimator", "importance", "--num-samples", "3,24",
             *SEEN_BY_RANK_0, "--out", os.path.join(tmp, "compare2")]), group)
        try:   # a run the first process cannot read stops every process, with its message
            load_run(os.path.join(tmp, "nowhere"), group=group)
            failure = None
        except ValueError as error:
            failure = f"{type(error).__name__}: {error}"
        results[rank] = {"model": model.state_dict(), "guide": guide.state_dict(),
                         "config": config.to_dict(), "checkpoint": checkpoint,
                         "failure": failure}
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_only_the_first_process_needs_the_run_folder_to_evaluate_it(tmp_path, tiny_run):
    results = in_two_processes(_only_rank_0_sees_the_run, str(tiny_run), str(tmp_path),
                               timeout=180)
    model, guide, _, config, checkpoint = load_run(str(tiny_run))
    for rank in range(2):
        assert results[rank]["checkpoint"] == checkpoint   # rank 0's file, read there alone
        assert results[rank]["config"] == config.to_dict()
        for name, ours in (("model", model), ("guide", guide)):
            theirs = results[rank][name]
            assert list(theirs) == list(ours.state_dict())
            assert all(torch.equal(theirs[key], value)
                       for key, value in ours.state_dict().items())
    assert results[0]["failure"].startswith("CheckpointError: no checkpoint at ")
    assert results[1]["failure"].startswith(
        "ValueError: process 1 of 2 stops: the first process could not read the run's "
        "checkpoint (no checkpoint at ")
    # The numbers are those of one process that reads the run itself.
    with one_thread():
        run_main("evaluate", tiny_run, "--estimator", "importance,elbo", "--num-samples", "24",
                 *SEEN_BY_RANK_0, "--out", tmp_path / "1.json")
        run_main("compare", tiny_run, tiny_run, "--estimator", "importance", "--num-samples",
                 "3,24", *SEEN_BY_RANK_0, "--out", tmp_path / "compare1")
    assert (tmp_path / "1.csv").read_bytes() == (tmp_path / "2.csv").read_bytes()
    assert (tmp_path / "compare1" / "paired.csv").read_bytes() == \
        (tmp_path / "compare2" / "paired.csv").read_bytes()


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_csv_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_killed_process_ends_the_run_with_a_clear_message(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", os.path.join(ROOT, "scripts", "train.py"), *TINY_TRAINING,
               "--num-epochs", "500", "--out", str(out)]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists():
            assert time.time() < deadline and runner.poll() is None, "training did not start"
            time.sleep(0.2)
        victim = next(pid for pid in _children(runner.pid) if _rank(pid) == "1")
        os.kill(victim, signal.SIGKILL)
        output, _ = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode != 0
    assert "FAILED" in output and "SIGKILL" in output, output[-3000:]
    # The folder still holds a consistent run to resume.
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1


def _children(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _rank(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            variables = dict(item.split(b"=", 1) for item in handle.read().split(b"\0")
                             if b"=" in item)
    except OSError:
        return None
    return variables.get(b"RANK", b"").decode() or None


def test_the_local_guide_is_refused_under_several_processes(tiny_run, capsys, monkeypatch):
    evaluate = load_script("evaluate")
    args = evaluate.make_parser().parse_args([str(tiny_run), "--guide", "local"])
    fake = ProcessGroup(0, 2, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="--guide local fits a guide to the points in one "
                                         "process; run it without torchrun"):
        evaluate.evaluate(args, fake)
