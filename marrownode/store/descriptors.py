"""A study's descriptors on its row (accession, date, description, patient name and ID): the console
lists thousands of studies without reading instance headers."""

from __future__ import annotations

import sqlite3
from typing import Any

#: Study descriptors kept on the study's row (the console lists thousands of studies without
#: reading instance headers); the first summarised instance of a study provides them.
STUDY_DESCRIPTORS = ("accession_number", "study_date", "study_description", "patient_name",
                     "patient_id", "issuer_of_patient_id", "study_time")


def write_descriptors(db: sqlite3.Connection, study_uid: str, header: dict[str, Any]) -> None:
    """Copy a header's descriptors onto its study's row, unless it has them already."""
    db.execute(
        "UPDATE studies SET described = 1, "
        + ", ".join(f"{column} = ?" for column in STUDY_DESCRIPTORS)
        + " WHERE study_uid = ? AND described = 0",
        [*(str(header.get(column) or "") for column in STUDY_DESCRIPTORS), study_uid])
