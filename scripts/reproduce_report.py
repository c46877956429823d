"""The table and the learning-curve figure of runs made by ``reproduce.py``, beside the
published numbers.

It reads only the small files of each run folder (``config.json``, ``metrics.csv``,
``curve.csv``, ``test-importance.json`` and ``.csv``), so it works on a copy without the
checkpoints, and runs no model. The first run is the baseline of the paired differences, which
are means of per-image differences on the same test images, with their standard errors. A run
stopped before its last epoch shows its learning curve, with no final score::

    python scripts/reproduce_report.py runs/burda/vae runs/burda/iwae5 runs/burda/iaf \\
        --out results/burda.md --figure docs/figures/learning_curves.png
"""

import csv
import json
import math
import os

from evaluation.command_line import parsers
from evaluation.reporting import plots
from evaluation.reporting.tables import Column, fixed, percent, render
from models.utilities.entry_points import entry_point
from models.base.config import ConfigError
from models.utilities.files import atomic_write_text, refuse_to_overwrite

#: (source, setting, nats): log p(x) on the 10,000 MNIST test images, K = 5000
BURDA = "Burda et al. 2016, Table 1"
PUBLISHED = {
    ("standard", "diagonal", "elbo", 1): (BURDA, "VAE, k = 1, 3,280 epochs", -86.76),
    ("standard", "diagonal", "iwae", 5): (BURDA, "IWAE, k = 5, 3,280 epochs", -85.54),
    ("standard", "diagonal", "iwae", 50): (BURDA, "IWAE, k = 50, 3,280 epochs", -84.78),
    ("vamp", "diagonal", "elbo", 1): ("Tomczak & Welling 2018, Table 2",
                                      "VampPrior, static MNIST, other networks", -85.57),
}

COLUMNS = (Column("label", "run", str, text=True), Column("prior", "prior", str, text=True),
           Column("guide", "guide", str, text=True),
           Column("objective", "objective", str, text=True),
           Column("epochs", "epochs", str), Column("hours", "training hours", fixed(2)),
           Column("log_px", "log p(x)", fixed(2)),
           Column("data_stderr", "s.e. (images)", fixed(2)),
           Column("mc_stderr", "MC s.e.", fixed(3)),
           Column("num_data", "test images", str), Column("num_samples", "K", str),
           Column("trusted", "trusted", percent),
           Column("recommended", "recommended log p(x)", fixed(2)),
           Column("published", "published", fixed(2)),
           Column("published_setting", "published setting", str, text=True))
PAIRED_COLUMNS = (Column("label", "run", str, text=True),
                  Column("baseline", "against", str, text=True),
                  Column("difference", "mean difference of log p(x)", fixed(3)),
                  Column("paired_stderr", "paired s.e.", fixed(3)),
                  Column("z", "difference / s.e.", fixed(1)),
                  Column("num_data", "test images", str))


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_run(path, label):
    """The numbers of one run folder (or a copy of its small files)."""
    def need(name):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise ConfigError(f"{path} has no {name}; is it a finished reproduce.py run?")
        return file

    with open(need("config.json")) as handle:
        config = json.load(handle)
    metrics = read_csv(need("metrics.csv"))
    curve = read_csv(need("curve.csv"))
    # A run stopped before its last epoch (by a time budget, say) has its curve but no final
    # score: it is shown with the score left blank and takes no part in the paired differences.
    nan = math.nan
    score = {"log_px_mean": nan, "log_px_data_stderr": nan, "log_px_stderr": nan,
             "num_data": "", "num_samples": ""}
    per_point, verdicts = {}, {}
    if os.path.exists(os.path.join(path, "test-importance.json")):
        with open(need("test-importance.json")) as handle:
            final = json.load(handle)
        (score,) = [item for item in final["estimators"] if item["estimator"] == "importance"]
        # Scores made before the verdicts have none: their cells stay blank.
        verdicts = final.get("verdicts") or {}
        per_point = {int(row["index"]): float(row["estimate"])
                     for row in read_csv(need("test-importance.csv"))
                     if row["estimator"] == "importance"}
    model, training = config["model"], config["training"]
    objective = training["objective"]
    particles = objective.get("options", {}).get("num_particles", 1)
    key = (model["prior"]["name"], model["guide"]["name"], objective["name"], particles)
    source, setting, value = PUBLISHED.get(key, ("", "", math.nan))
    return {
        "label": label, "prior": key[0], "guide": key[1],
        "objective": objective["name"] + (f", k = {particles}" if key[2] == "iwae" else ""),
        "epochs": f"{len(metrics)} of {training['num_epochs']}",
        "hours": sum(float(row["seconds"]) for row in metrics) / 3600,
        "log_px": score["log_px_mean"], "data_stderr": score["log_px_data_stderr"],
        "mc_stderr": score["log_px_stderr"], "num_data": score["num_data"],
        "num_samples": score["num_samples"],
        "trusted": verdicts["num_trusted"] / verdicts["num_points"] if verdicts else nan,
        "recommended": verdicts.get("recommended_mean", nan), "published": value,
        "published_setting": f"{setting} ({source})" if source else "",
        "curve": {"label": label, "epochs": [int(row["epoch"]) for row in curve],
                  "log_px": [float(row["log_px_mean"]) for row in curve],
                  "stderr": [float(row["log_px_data_stderr"]) for row in curve]},
        "per_point": per_point,
    }


def paired(run, baseline):
    """The mean per-image difference of log p(x) against ``baseline`` and its standard error."""
    shared = sorted(set(run["per_point"]) & set(baseline["per_point"]))
    if len(shared) < 2:
        raise ConfigError(f"{run['label']} and {baseline['label']} share fewer than two scored "
                          "test images")
    differences = [run["per_point"][i] - baseline["per_point"][i] for i in shared]
    mean = sum(differences) / len(differences)
    variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
    stderr = math.sqrt(variance / len(differences))
    return {"label": run["label"], "baseline": baseline["label"], "difference": mean,
            "paired_stderr": stderr, "z": mean / stderr if stderr > 0 else math.nan,
            "num_data": len(shared)}


def _main(args):
    labels = args.labels or [os.path.basename(os.path.normpath(path)) for path in args.runs]
    if len(labels) != len(args.runs):
        raise ConfigError(f"--labels names {len(labels)} runs but {len(args.runs)} were given")
    refuse_to_overwrite([path for path in (args.out, args.figure) if path], args.overwrite)
    runs = [read_run(path, label) for path, label in zip(args.runs, labels)]
    if not runs[0]["per_point"] and len(runs) > 1:
        raise ConfigError(f"the baseline {args.runs[0]} has no final score "
                          "(test-importance.csv); put a finished run first")
    paired_rows = [paired(run, runs[0]) for run in runs[1:] if run["per_point"]]
    text = render(runs, COLUMNS, "markdown")
    if paired_rows:
        text += "\n\n" + render(paired_rows, PAIRED_COLUMNS, "markdown")
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}")
    if args.figure:
        references, seen = [], set()
        for run in runs:
            if not math.isnan(run["published"]) and run["published"] not in seen:
                seen.add(run["published"])
                references.append({"label": f"published: {run['published_setting']}",
                                   "value": run["published"]})
        plots.learning_curves([run["curve"] for run in runs], args.figure, references,
                              title="log p(x) on the first test images during training")
        print(f"wrote {args.figure}")
    return runs, paired_rows


main = entry_point(_main, parsers.reproduce_report)


if __name__ == "__main__":
    main()
