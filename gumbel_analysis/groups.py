"""LVIS's frequency groups, named once: a category is rare (r), common (c) or frequent (f) by the
number of training images it appears in (LVIS v1: 1-10, 11-100, more than 100)."""

#: Group letters as LVIS annotation files spell them, in the order reports show them.
FREQUENCY_GROUPS = ("r", "c", "f")
#: Each group's name in tables, figures and messages.
GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
#: The same with the row over all categories, as reports label their rows.
GROUP_LABELS = {"all": "all", **GROUP_NAMES}
