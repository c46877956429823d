"""The one palette of every plot and figure: Paul Tol's colour-blind-safe schemes. Every
colour-coded plot also carries text labels, so no reading depends on colour alone."""

#: Paul Tol's "muted" scheme (nine colours) and a pale grey, for categories such as digits
CATEGORICAL = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677",
               "#882255", "#AA4499", "#777777")
#: Paul Tol's "vibrant" scheme, for the few named series below
PRIOR, GUIDE, POSTERIOR = "#777777", "#0077BB", "#EE7733"
TRAIN, VALIDATION = "#0077BB", "#CC3311"
ESTIMATORS = {"prior": "#777777", "importance": "#0077BB", "ais": "#EE7733",
              "mixture": "#009988", "elbo": "#CC3311", "exact": "#000000",
              "quadrature": "#EE3377"}
OTHER = "#000000"


def estimator_colour(name):
    return ESTIMATORS.get(name, OTHER)


def category_colour(label):
    """The colour of a class label (a digit); unlabelled points (-1) are grey."""
    return CATEGORICAL[int(label) % len(CATEGORICAL)] if label >= 0 else CATEGORICAL[-1]
