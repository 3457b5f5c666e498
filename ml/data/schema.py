"""Table schemas of the three input tables and the in-memory `Dataset` container.

The schema is the contract between every loader (CSV/Parquet folder, PostgreSQL,
synthetic generator) and the rest of the pipeline: loaders return raw frames,
`ml.data.validation.validate_dataset` checks them against these specs and returns
a normalised `Dataset` (parsed timestamps, a 0/1 `label` column on interactions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:
    from ml.data.ratings import RatingInfo

Kind = Literal["id", "str", "text", "tags", "float", "int", "datetime", "label"]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False
    doc: str = ""


ITEMS_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("item_id", "id", doc="unique item identifier (string or integer)"),
    ColumnSpec("title", "text", nullable=True, doc="short title"),
    ColumnSpec("description", "text", nullable=True, doc="free text"),
    ColumnSpec("tags", "tags", nullable=True, doc="'|'-separated tags (or a list in Parquet/Postgres arrays)"),
    ColumnSpec("genre", "str", nullable=True, doc="one category"),
    ColumnSpec("maker", "str", nullable=True, doc="creator / studio / brand"),
    ColumnSpec("price", "float", nullable=True, doc=">= 0"),
    ColumnSpec("duration_s", "float", nullable=True, doc="duration in seconds, >= 0"),
    ColumnSpec("released_at", "datetime", nullable=True, doc="release date (ISO 8601)"),
)

USERS_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("user_id", "id", doc="unique user identifier"),
    # Any further columns are optional profile columns: numeric ones are scaled,
    # string ones become vocabularies with an out-of-vocabulary bucket.
)

INTERACTIONS_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("user_id", "id", doc="must exist in users"),
    ColumnSpec("item_id", "id", doc="must exist in items"),
    ColumnSpec("decision", "label", required=False, doc="'like' or 'nope' (either this or rating)"),
    ColumnSpec("rating", "float", required=False,
               doc="0-1 score or 1-5 / 1-10 stars (see ml.data.ratings); >= 4 of 5 (0.5 on 0-1) is a like"),
    ColumnSpec("timestamp", "datetime", doc="when the swipe happened (ISO 8601 or epoch seconds)"),
)

TABLES: dict[str, tuple[ColumnSpec, ...]] = {
    "items": ITEMS_COLUMNS,
    "users": USERS_COLUMNS,
    "interactions": INTERACTIONS_COLUMNS,
}

LIKE_VALUES = frozenset({"like", "liked", "yes", "right", "1", "true"})
NOPE_VALUES = frozenset({"nope", "dislike", "no", "left", "0", "false"})
TAG_SEPARATOR = "|"


@dataclass
class Dataset:
    """The three tables after validation.

    `interactions` always carries `label` (1 = like, 0 = nope), `rating` (float32 on
    its own scale; on 0-1 filled from the label where missing, NaN on star scales) and a
    timezone-naive UTC `timestamp`; `items.tags` is a list of strings per row;
    `items.released_at` is a timestamp (NaT allowed). `sources` maps table name to where
    it came from (file path, `postgres:<table>` or `synthetic`) for error messages and
    lineage. `ratings` says which scale turned ratings into labels (None: no ratings).
    """

    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    sources: dict[str, str] = field(default_factory=dict)
    ratings: "RatingInfo | None" = None

    @property
    def profile_columns(self) -> list[str]:
        return [c for c in self.users.columns if c != "user_id"]

    def row_counts(self) -> dict[str, int]:
        return {
            "users": int(len(self.users)),
            "items": int(len(self.items)),
            "interactions": int(len(self.interactions)),
        }
