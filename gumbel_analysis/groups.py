"""LVIS's frequency groups, named once: a category is rare (r), common (c) or frequent (f) by the
number of training images it appears in (LVIS v1: 1-10, 11-100, more than 100)."""

#: Group letters as LVIS annotation files spell them, in the order reports show them.
FREQUENCY_GROUPS = ("r", "c", "f")
#: Each group's name in tables, figures and messages.
GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
#: The same with the row over all categories, as reports label their rows.
GROUP_LABELS = {"all": "all", **GROUP_NAMES}


def common_frequent_border(class_frequency, groups, what: str = "the border") -> float:
    """The image frequency midway between the most frequent rare/common class and the least
    frequent frequent class: LVIS v1's ``100.5 / 100170`` (about 0.001, both EQL/DropLoss's
    lambda and RFS's threshold t). Raises ValueError naming ``what`` when it cannot be derived."""
    freq = [float(f) for f in class_frequency]
    below = [f for f, g in zip(freq, groups, strict=True) if g in ("r", "c")]
    above = [f for f, g in zip(freq, groups, strict=True) if g == "f"]
    if not below or not above:
        raise ValueError(f"cannot derive {what}: the data lacks rare/common or frequent classes")
    lo, hi = max(below), min(above)
    if lo >= hi:
        raise ValueError(f"cannot derive {what}: the frequency groups overlap")
    return (lo + hi) / 2


def lambda_from_groups(class_frequency, groups: list[str]) -> float:
    """lambda midway between the most frequent rare/common class and the least frequent frequent
    class (for LVIS v1: ``100.5 / 100170``, ``LVIS_V1_LAMBDA``)."""
    try:
        return common_frequent_border(class_frequency, groups, "lambda")
    except ValueError as err:
        raise ValueError(f"{err}; pass --lambda") from None
