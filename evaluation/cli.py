"""Command-line options shared by the evaluation scripts."""

from evaluation.ais import SCHEDULES
from evaluation.estimators import ESTIMATORS
from models import lookup


def estimator_options(args):
    """The options of every estimator, by the keyword names the estimators take."""
    return {
        "max_batch_elements": args.max_batch_elements,
        "mixture_weight": args.mixture_weight,
        "ais_steps": args.ais_steps,
        "ais_leapfrog": args.ais_leapfrog,
        "ais_step_size": args.ais_step_size,
        "ais_target_accept": args.ais_target_accept,
        "ais_schedule": args.ais_schedule,
        "ais_start": args.ais_start,
        "quadrature_tolerance": args.quadrature_tolerance,
    }


def estimator_names(values, default):
    """Flatten repeated comma lists of estimator names; an unknown name lists the valid ones."""
    names = [name for value in values for name in value]
    for name in names:
        lookup(ESTIMATORS, name, "estimator")
    return list(dict.fromkeys(names)) or list(default)


def add_estimator_flags(parser):
    group = parser.add_argument_group("estimator options")
    group.add_argument("--max-batch-elements", type=int, default=None,
                       help="at most this many (sample, data point) pairs at once "
                       "(default: about 256 MB of work per chunk)")
    group.add_argument("--mixture-weight", type=float, default=0.5,
                       help="a in the mixture proposal a q(z|x) + (1 - a) p(z)")
    group.add_argument("--ais-steps", type=int, default=500,
                       help="intermediate distributions T of AIS")
    group.add_argument("--ais-leapfrog", type=int, default=10,
                       help="leapfrog steps per HMC transition")
    group.add_argument("--ais-chains", type=int, default=16, help="AIS chains per data point")
    group.add_argument("--ais-step-size", type=float, default=0.05,
                       help="initial HMC step size (adapted per data point)")
    group.add_argument("--ais-target-accept", type=float, default=0.65,
                       help="acceptance rate the step size adapts towards")
    group.add_argument("--ais-schedule", choices=sorted(SCHEDULES), default="sigmoid")
    group.add_argument("--ais-start", choices=("prior", "guide"), default="prior",
                       help="start the chains from the prior or from the guide q(z|x)")
    group.add_argument("--quadrature-tolerance", type=float, default=1e-4,
                       help="refine the grid until log p-hat changes by less (nats)")
