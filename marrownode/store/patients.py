"""A patient's studies in the index, for finding the prior of a study (StudyIndex inherits
these rows): who a study belongs to is on its row (Patient ID and issuer, copied from its
first header), never in the log."""

from __future__ import annotations

import json
from typing import Any

from marrownode.report_shape import PriorShape
from marrownode.store.database import Database


class PatientRows:
    """The same patient's studies, and the prior a PACS search found for a study."""

    db: Database

    def patient_studies(self, patient_id: str, issuer: str) -> list[dict[str, Any]]:
        """Every study of the patient (exactly this ID and issuer) with its report."""
        rows = self.db.connection().execute(
            """SELECT study_uid, state, study_date, study_time, patient_id,
                      issuer_of_patient_id, report, prior FROM studies
               WHERE patient_id = ? AND issuer_of_patient_id = ?""",
            (patient_id, issuer)).fetchall()
        return [dict(row) for row in rows]

    def keep_prior(self, study_uid: str, prior: PriorShape) -> None:
        """The prior found in the PACS, kept with the study (its next analysis uses it)."""
        with self.db.transaction() as db:
            db.execute("UPDATE studies SET prior = ? WHERE study_uid = ?",
                       (json.dumps(prior), study_uid))
