"""Training by SVI: epochs of shuffled minibatches, validation, checkpoints, resume.

    step = TrainingStep(model, guide, config.training)   # the objective, autograd, Adam
    for epoch in epochs:
        for x in train.batches(batch_size, shuffle=True):
            step(x, num_data=N)     # minibatch ELBO scaled by N / B: unbiased for the full ELBO

A step is SVI's: the loss of the literal Pyro model and guide (Trace_ELBO's estimator, or the
chosen objective), differentiated by autograd, then one ``torch.optim.Adam`` over every parameter
of the model and the guide: what ``pyro.infer.SVI(model, guide, Adam, Trace_ELBO())`` computes
(its loss and gradients are tested equal to ``Trace_ELBO``'s, ``tests/test_speed.py``). It
reads nothing back to the host: the losses are summed on the device and read every
``CHECK_EVERY`` steps and at the end of the epoch. The data are
validated once, when training starts, and Pyro's per-step validation is off during the steps.
Where the objective allows it the loss is compiled with the JIT (``JitTrace_ELBO``); a model
that cannot be traced trains without it, with a message. On CUDA the compiled loss and its
gradients are then captured in a CUDA graph for each minibatch size and replayed
(``--no-cuda-graph`` turns this off).

Everything a run produces goes to one folder: ``config.json``, ``metrics.csv``, ``checkpoint.pt``
(after the last finished epoch), ``best.pt`` (best validation ELBO) and ``summary.json``, all
written atomically; ``after_epoch`` lets the caller add more (``train.py`` draws ``elbo.png``).
Resuming from ``checkpoint.pt`` restores parameters, optimizer moments and random number
generator states, so a run that was split in two ends exactly where an uninterrupted run with
the same seed ends (on the CPU; GPU kernels are not all deterministic). ``time_budget`` ends a
run cleanly at the end of the last epoch that fits, to be continued with ``--resume``.

Where each part lives:

==================  ===========================================================================
``steps``           :class:`TrainingStep`, composed of the parts below
``losses``          the objective's loss of a minibatch, plain or traced by the JIT
``gradients``       its gradients, in one process or averaged over several (DDP)
``optimizer``       Adam over the model's and guide's parameters, its checkpointed state
``cuda_graphs``     the loss and its gradients replayed as one CUDA graph per minibatch size
``loop``            :func:`fit`: the epoch loop
``callbacks``       the loop's collaborators: schedule, divergence watch, run files, budget...
``schedule``        the learning-rate schedules (constant, Burda et al. 2016)
``scores``          the ELBO of a split, the data check, the run's summary
==================  ===========================================================================
"""

from inference.training.callbacks import (FLUSH_EVERY, METRIC_FIELDS, Callback,
                                          DivergenceWatch, TrainingDiverged, write_metrics)
from inference.training.cuda_graphs import GRAPH_WARMUP_STEPS
from inference.training.loop import CHECK_EVERY, TrainingLoop, epoch_seed, fit
from inference.training.optimizer import (adam, forget_stale_params, parameters,
                                          pyro_optimizer_state)
from inference.training.schedule import BURDA_EPOCHS, BURDA_STAGES, learning_rate_at
from inference.training.scores import elbo_per_datapoint, mean_elbo, validate_data
from inference.training.steps import TrainingStep

__all__ = ["BURDA_EPOCHS", "BURDA_STAGES", "CHECK_EVERY", "FLUSH_EVERY", "GRAPH_WARMUP_STEPS",
           "METRIC_FIELDS", "Callback", "DivergenceWatch", "TrainingDiverged", "TrainingLoop",
           "TrainingStep", "adam", "elbo_per_datapoint", "epoch_seed", "fit",
           "forget_stale_params", "learning_rate_at", "mean_elbo", "parameters",
           "pyro_optimizer_state", "validate_data", "write_metrics"]
