"""Per-case attributes (scanner, site, sex, age...) for data sets whose cases are files, not manifest rows.

A segmentation (or other case-folder) data set carries its group columns in ``attributes.csv`` at its root: a
``case_id`` column naming each case as the data set does, and one column per attribute. The subgroup audit then
reports performance (e.g. Dice) by group. Messages give counts, never case ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medsight.errors import MedsightError

FILENAME = "attributes.csv"
ID_COLUMN = "case_id"


def case_attributes(root: Path, ids: Sequence[str]) -> pd.DataFrame | None:
    """The attribute columns of ``ids``, one row per id in that order; None when the data set has no attributes file.

    Cases the file does not list get "missing" (so they are counted, not dropped).
    """
    path = Path(root) / FILENAME
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={ID_COLUMN: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MedsightError(f"not a readable CSV ({exc})", path) from exc
    if ID_COLUMN not in table.columns:
        raise MedsightError(f"no '{ID_COLUMN}' column (columns: {', '.join(map(str, table.columns))})", path)
    if table[ID_COLUMN].duplicated().any():
        raise MedsightError(f"{int(table[ID_COLUMN].duplicated().sum())} case id(s) listed more than once", path)
    columns = [c for c in table.columns if c != ID_COLUMN]
    if not columns:
        raise MedsightError(f"no attribute columns beside '{ID_COLUMN}'", path)
    indexed = table.set_index(ID_COLUMN)[columns]
    rows = indexed.reindex([str(i) for i in ids])
    return rows.reset_index(drop=True)
