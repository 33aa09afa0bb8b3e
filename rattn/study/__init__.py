"""Studies: a paper's claim as a grid of ordinary training runs, with a table and a plot.

``spec`` describes a study as data, ``runner`` runs its cells (skipping finished
ones, resuming the rest), ``report`` writes table.md and the plot. The studies
themselves and the command line are in experiments/studies.py and
experiments/study.py.
"""

from rattn.study.spec import CONFIG_KEY, Axis, Cell, Option, Paper, Scale, Study, expand

__all__ = ['CONFIG_KEY', 'Axis', 'Cell', 'Option', 'Paper', 'Scale', 'Study', 'expand']
