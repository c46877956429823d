"""The Adam step size of each epoch: constant, or the schedule of Burda et al. (2016)."""

#: Burda et al. (2016), section 5: "for 3^i epochs with learning rate 0.001 * 10^(-i/7), for
#: i = 0, ..., 7", 3,280 epochs in all
BURDA_STAGES = 8
BURDA_EPOCHS = (3 ** BURDA_STAGES - 1) // 2


def learning_rate_at(training, epoch):
    """The Adam step size of epoch ``epoch`` (counted from 1) under ``training``'s schedule.

    ``burda`` is the schedule of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
    Autoencoders": stage i = 0..7 lasts 3^i of the 3,280 epochs at ``learning_rate`` *
    10^(-i/7). It is laid over ``num_epochs`` in proportion: with 3,280 epochs it is the paper's;
    with fewer, each epoch takes the rate of the stage its start falls in (a stage shorter than
    an epoch is skipped)."""
    if training.learning_rate_schedule == "constant":
        return training.learning_rate
    # Integer arithmetic: the start of epoch e lies at (e - 1) * 3280 / num_epochs paper epochs.
    start = (epoch - 1) * BURDA_EPOCHS
    stage, stage_end = 0, 1
    while stage < BURDA_STAGES - 1 and start >= stage_end * training.num_epochs:
        stage += 1
        stage_end += 3 ** stage
    return training.learning_rate * 10 ** (-stage / 7)
