"""Ingest: one received instance from encoded bytes to a durable, indexed spool file.

The caller (net/receiver) maps the outcome to a DIMSE status; success is only reported after the
file is fsynced, renamed into place and its index row committed.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from marrownode.dixon.header import summarise
from marrownode.store.identity import Identity, read_identity
from marrownode.store.index import Index
from marrownode.store.spool import OutOfSpace, Spool

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

_IDENTITY_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


@dataclass(frozen=True)
class IngestOutcome:
    status: int
    comment: str = ""
    study_uid: str = ""
    path: Path | None = None


class Ingestor:
    """Writes received instances into the spool and the index."""

    def __init__(self, spool: Spool, index: Index) -> None:
        self.spool = spool
        self.index = index

    def _identify(self, encoded: bytes) -> tuple[dict[str, Any], str] | IngestOutcome:
        """The instance's identity (UIDs) and transfer syntax, or the failure to answer with.

        Only what the acknowledgement needs: the header summary the assembler reads is made
        later, off the receiving path (summarise_pending)."""
        identity = read_identity(encoded) or _read_identity_with_pydicom(encoded)
        if isinstance(identity, IngestOutcome):
            return identity
        if not (identity.sop_instance_uid and identity.study_uid and identity.series_uid):
            return IngestOutcome(STATUS_CANNOT_UNDERSTAND, "missing Study/Series/SOP UID")
        if identity.media_sop_instance_uid != identity.sop_instance_uid:
            return IngestOutcome(
                STATUS_DATASET_MISMATCH, "SOPInstanceUID differs from the request's UID"
            )
        header = {"study_uid": identity.study_uid, "series_uid": identity.series_uid,
                  "sop_instance_uid": identity.sop_instance_uid,
                  "sop_class_uid": identity.sop_class_uid}
        return header, identity.transfer_syntax

    def summarise_pending(self, study_uid: str) -> int:
        """Complete the header summaries of a study's instances stored since the last call
        (the assembler calls it before deciding); returns how many it summarised."""
        headers = {}
        for sop_uid, path, identity in self.index.unsummarised(study_uid):
            try:
                header = summarise(dcmread(path, stop_before_pixels=True))
            except Exception as exc:  # a header we cannot summarise is still kept, never refused
                log.warning("event=header_unreadable sop=%s error=%s", sop_uid,
                            type(exc).__name__)
                header = {"frames": [], "modality": ""}
            header.update(identity)
            headers[sop_uid] = header
        if headers:
            self.index.set_headers(headers)
        return len(headers)

    def store(self, encoded: bytes, association_id: str | None = None) -> IngestOutcome:
        """Store one instance given as DICOM File Format bytes (preamble + meta + dataset)."""
        parsed = self._identify(encoded)
        if isinstance(parsed, IngestOutcome):
            return parsed
        header, transfer_syntax = parsed
        sop_uid, study_uid = header["sop_instance_uid"], header["study_uid"]
        path = self.spool.path_for(study_uid, header["series_uid"], sop_uid)
        try:
            self.spool.write(path, encoded)
        except OutOfSpace:
            log.warning("event=store_refused reason=disk_watermark sop=%s", sop_uid)
            return IngestOutcome(STATUS_OUT_OF_RESOURCES, "spool below free-space watermark")
        except OSError as exc:
            status = (STATUS_OUT_OF_RESOURCES if exc.errno == errno.ENOSPC
                      else STATUS_PROCESSING_FAILURE)
            log.error("event=store_failed sop=%s error=%s", sop_uid, exc.strerror)
            return IngestOutcome(status, "cannot write to spool")
        previous = self.index.record_instance(
            header, path, len(encoded), transfer_syntax, association_id, summarised=False
        )
        if previous and previous != str(path):
            Path(previous).unlink(missing_ok=True)
        return IngestOutcome(STATUS_SUCCESS, study_uid=study_uid, path=path)

    def recover(self) -> tuple[int, int]:
        """After a crash: drop temp files; index, where they are, spool files that lost their
        index row (renamed into place, but the node died before the commit)."""
        removed = self.spool.prepare()
        known = self.index.known_paths()
        reindexed = 0
        for path in self.spool.data_dir.rglob("*.dcm"):
            if str(path) in known:
                continue
            encoded = path.read_bytes()
            parsed = self._identify(encoded)
            if isinstance(parsed, IngestOutcome):
                log.warning("event=spool_file_unreadable file=%s", path.name)
                continue
            header, transfer_syntax = parsed
            self.index.record_instance(header, path, len(encoded), transfer_syntax, None,
                                       summarised=False)
            reindexed += 1
        return removed, reindexed


def _read_identity_with_pydicom(encoded: bytes) -> Identity | IngestOutcome:
    """What read_identity leaves to pydicom: other encodings, and files it cannot walk."""
    try:
        dataset = dcmread(BytesIO(encoded), stop_before_pixels=True,
                          specific_tags=_IDENTITY_TAGS)
        meta = dataset.file_meta
        sop_uid = str(dataset.SOPInstanceUID)
        return Identity(
            study_uid=str(dataset.StudyInstanceUID),
            series_uid=str(dataset.SeriesInstanceUID),
            sop_instance_uid=sop_uid,
            sop_class_uid=str(dataset.get("SOPClassUID", "")),
            transfer_syntax=str(meta.TransferSyntaxUID),
            media_sop_instance_uid=str(getattr(meta, "MediaStorageSOPInstanceUID", sop_uid)),
        )
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, EOFError,
            OSError, NotImplementedError) as exc:
        log.warning("event=store_rejected reason=unreadable_dataset error=%s",
                    type(exc).__name__)
        return IngestOutcome(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {exc}"[:64])
