"""[priors]: finding the patient's earlier study and comparing with it (docs/follow-up.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class PriorSettings(BaseModel):
    """Where to look for a prior, how far back, how long a PACS query may take, and the
    rule that calls a focus grown or smaller."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: Compare each study with the same patient's most recent earlier study that has a Dixon
    #: set (among `process`'s inputs, in the node's index, then in the PACS).
    enabled: bool = True
    #: The [[destinations]] name to query (C-FIND) and retrieve the prior's SR from (C-GET);
    #: empty: the first destination with retrieve = "c-get"; none such: the PACS is not asked.
    query: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] = ""
    look_back_years: Annotated[int, Field(ge=1, le=50)] = 5
    #: The whole search in the PACS (find, then retrieve) ends after this long.
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 60.0
    #: Grown: equivalent diameter up by at least grown_percent and at least grown_min_mm
    #: (smaller: down by as much).
    grown_percent: Annotated[float, Field(gt=0, le=500)] = 20.0
    grown_min_mm: Annotated[float, Field(ge=0, le=100)] = 3.0
    #: How far apart (mm, once aligned by the named bodies) a prior and a current focus at the
    #: same level may lie to be the same focus.
    match_distance_mm: Annotated[float, Field(gt=0, le=100)] = 15.0
