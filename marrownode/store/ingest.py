"""Ingest: one received instance from encoded bytes to a durable, indexed spool file.

The outcome says what happened in storage terms; the receiving side maps it to a DIMSE status.
STORED is only reported after the file is fsynced, renamed into place and its row committed.
"""

from __future__ import annotations

import errno
import logging
import mmap
import sqlite3
import struct
import zlib
from dataclasses import dataclass, replace
from enum import StrEnum
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from marrownode.dixon.header import summarise
from marrownode.part10 import Examination, Identity, examine
from marrownode.store.spool import IncomingFile, OutOfSpace, Spool
from marrownode.store.studies import InstanceRow, StudyIndex

log = logging.getLogger(__name__)



class IngestResult(StrEnum):
    """What became of one received instance."""

    STORED = "stored"
    OUT_OF_SPACE = "out_of_space"  # below the free-space watermark, or the disk is full
    MISMATCH = "mismatch"  # the data set's SOP Instance UID is not the request's
    UNREADABLE = "unreadable"  # no identity could be read from the data set
    WRITE_FAILED = "write_failed"  # the spool could not be written for another reason
    TOO_LARGE = "too_large"  # inflated beyond [storage] max_instance_mb


#: The largest data set a deflated one may inflate to, unless [storage] max_instance_mb says.
DEFAULT_MAX_INSTANCE_BYTES = 4096 * 1024 * 1024

#: Header reads keep values up to this size in memory; larger ones (a hostile 2 GB private
#: element before the pixels) are left on disk unless asked for: a bounded read.
HEADER_VALUE_BYTES = 1024 * 1024

_IDENTITY_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


@dataclass(frozen=True)
class IngestOutcome:
    """The result, a comment for the peer, and where a stored instance went."""

    result: IngestResult
    comment: str = ""
    study_uid: str = ""
    path: Path | None = None


class Ingestor:
    """Writes received instances into the spool and the index."""

    def __init__(self, spool: Spool, studies: StudyIndex,
                 max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES) -> None:
        self.spool = spool
        self.studies = studies
        self.max_instance_bytes = max_instance_bytes

    def _identify(self, encoded: bytes | mmap.mmap,
                  path: Path | None = None) -> tuple[dict[str, Any], str] | IngestOutcome:
        """The instance's identity (UIDs) and transfer syntax, or the failure to answer with.

        Only what the acknowledgement needs: the header summary the assembler reads is made
        later, off the receiving path (summarise_pending). encoded may be a memory map of the
        received file: the walks touch element headers only, never the whole file."""
        return self._judge(examine(encoded), encoded, path)

    def _judge(self, examination: Examination, encoded: bytes | mmap.mmap,
               path: Path | None) -> tuple[dict[str, Any], str] | IngestOutcome:
        """_identify's verdict on what the walk found."""
        if examination.problem is not None:
            log.warning("event=store_rejected reason=unsound_dataset detail=%s",
                        examination.problem.replace(" ", "_"))
            return IngestOutcome(IngestResult.UNREADABLE,
                                 f"data set unsound: {examination.problem}"[:64])
        identity = examination.identity or _read_identity_with_pydicom(
            path if path is not None else BytesIO(bytes(encoded)))
        if isinstance(identity, IngestOutcome):
            return identity
        if not (identity.sop_instance_uid and identity.study_uid and identity.series_uid):
            return IngestOutcome(IngestResult.UNREADABLE, "missing Study/Series/SOP UID")
        if identity.media_sop_instance_uid != identity.sop_instance_uid:
            return IngestOutcome(
                IngestResult.MISMATCH, "SOPInstanceUID differs from the request's UID"
            )
        if identity.media_sop_class_uid and identity.media_sop_class_uid != identity.sop_class_uid:
            return IngestOutcome(IngestResult.MISMATCH, "SOPClassUID differs from the request's")
        header = {"study_uid": identity.study_uid, "series_uid": identity.series_uid,
                  "sop_instance_uid": identity.sop_instance_uid,
                  "sop_class_uid": identity.sop_class_uid}
        return header, identity.transfer_syntax

    def summarise_pending(self, study_uid: str) -> int:
        """Complete the header summaries of a study's instances stored since the last call;
        returns how many it summarised."""
        return len(self._summarise(self.studies.unsummarised(study_uid)))

    def summarised_instances(self, study_uid: str) -> list[InstanceRow]:
        """The study's instances, every header complete (the assembler decides on these).
        One read: an instance stored while the study is looked at is either in the list
        summarised, or not in it; never in it with only its identity, which would make one of
        our own results, forwarded back by a PACS, look like a new source."""
        rows = self.studies.instances(study_uid)
        pending = [(r.sop_instance_uid, r.path, r.header) for r in rows if not r.summarised]
        headers = self._summarise(pending)
        return [replace(r, header=headers[r.sop_instance_uid], summarised=True)
                if r.sop_instance_uid in headers else r for r in rows]

    def _summarise(self, pending: list[tuple[str, str, dict[str, Any]]],
                   ) -> dict[str, dict[str, Any]]:
        headers = {}
        for sop_uid, path, identity in pending:
            try:
                header = summarise(dcmread(path, stop_before_pixels=True,
                                           defer_size=HEADER_VALUE_BYTES))
            except Exception as exc:  # a header we cannot summarise is still kept, never refused
                log.warning("event=header_unreadable sop=%s error=%s", sop_uid,
                            type(exc).__name__)
                header = {"frames": [], "modality": ""}
            header.update(identity)
            headers[sop_uid] = header
        if headers:
            self.studies.set_headers(headers)
        return headers

    def store_file(self, incoming: IncomingFile, association_id: str | None = None,
                   ) -> IngestOutcome:
        """Store one received instance already written to a spool temp file: identify and check
        it through a memory map, then move it into place and index it. The temp file is
        committed or removed, whatever happens."""
        if incoming.refused is not None:  # the disk filled while it streamed in
            incoming.discard()
            log.warning("event=store_refused reason=disk_watermark_while_receiving")
            return IngestOutcome(IngestResult.OUT_OF_SPACE, "spool below free-space watermark")
        try:
            incoming, parsed = self._identify_file(incoming)
        except BaseException:
            incoming.discard()
            raise
        if isinstance(parsed, IngestOutcome):
            incoming.discard()
            return parsed
        header, transfer_syntax = parsed
        sop_uid, study_uid = header["sop_instance_uid"], header["study_uid"]
        path = self.spool.path_for(study_uid, header["series_uid"], sop_uid)
        try:
            self.spool.commit(incoming, path)
        except OutOfSpace:
            log.warning("event=store_refused reason=disk_watermark sop=%s", sop_uid)
            return IngestOutcome(IngestResult.OUT_OF_SPACE, "spool below free-space watermark")
        except OSError as exc:
            result = (IngestResult.OUT_OF_SPACE if exc.errno == errno.ENOSPC
                      else IngestResult.WRITE_FAILED)
            log.error("event=store_failed sop=%s error=%s", sop_uid, exc.strerror)
            return IngestOutcome(result, "cannot write to spool")
        try:
            previous = self.studies.record_instance(
                header, path, incoming.size, transfer_syntax, association_id, summarised=False
            )
        except sqlite3.Error as exc:
            return self._index_failed(exc, sop_uid, path)
        if previous and previous != str(path):
            Path(previous).unlink(missing_ok=True)
        return IngestOutcome(IngestResult.STORED, study_uid=study_uid, path=path)

    def _index_failed(self, exc: sqlite3.Error, sop_uid: str, path: Path) -> IngestOutcome:
        """The file is in place but its row could not be committed: not acknowledged, so it
        must not stay as an unindexed file (unless it replaced an instance already indexed
        at the same path, which stays acknowledged)."""
        full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        log.error("event=index_write_failed sop=%s error=%s", sop_uid,
                  str(exc).replace(" ", "_"))
        try:
            indexed = self.studies.has_instance(sop_uid)
        except sqlite3.Error:
            indexed = True  # cannot tell: keep the file, start-up recovery decides
        if not indexed:
            path.unlink(missing_ok=True)
        if full:
            return IngestOutcome(IngestResult.OUT_OF_SPACE, "index disk full")
        return IngestOutcome(IngestResult.WRITE_FAILED, "cannot write to index")

    def _identify_file(self, incoming: IncomingFile
                       ) -> tuple[IncomingFile, tuple[dict[str, Any], str] | IngestOutcome]:
        """The file to commit (a deflated data set is replaced by its inflation) and its
        identity, or the failure to answer with. One walk per file."""
        incoming.finish()
        if incoming.size == 0:
            return incoming, IngestOutcome(IngestResult.UNREADABLE, "empty data set")
        with incoming.view() as view:
            examination = examine(view)
            if not examination.deflated:
                return incoming, self._judge(examination, view, incoming.path)
        try:
            inflated = self.spool.incoming()
        except OutOfSpace:
            return incoming, IngestOutcome(IngestResult.OUT_OF_SPACE,
                                           "spool below free-space watermark")
        try:
            problem = inflate(incoming.path, inflated, self.max_instance_bytes)
        except (InvalidDicomError, OSError, ValueError, struct.error, EOFError) as exc:
            problem = f"meta unreadable ({type(exc).__name__})"
        incoming.discard()
        if inflated.refused is not None:
            return inflated, IngestOutcome(IngestResult.OUT_OF_SPACE,
                                           "spool below free-space watermark")
        if problem is not None:
            too_large = problem.startswith("larger than")
            log.warning("event=store_rejected reason=%s detail=%s",
                        "too_large" if too_large else "deflate_unsound",
                        problem.replace(" ", "_"))
            return inflated, IngestOutcome(
                IngestResult.TOO_LARGE if too_large else IngestResult.UNREADABLE,
                f"deflated data set: {problem}"[:64])
        with inflated.view() as view:
            return inflated, self._identify(view, inflated.path)

    def recover(self) -> tuple[int, int]:
        """After a crash: drop temp files; index, where they are, spool files that lost their
        index row (renamed into place, but the node died before the commit)."""
        removed = self.spool.prepare()
        known = self.studies.known_paths()
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
            self.studies.record_instance(header, path, len(encoded), transfer_syntax, None,
                                       summarised=False)
            reindexed += 1
        return removed, reindexed


#: Inflation reads and writes this much at a time: memory stays bounded whatever the ratio.
_INFLATE_CHUNK = 1024 * 1024


def inflate(source: Path, target: IncomingFile, max_bytes: int) -> str | None:
    """Write source (deflated) to target as Explicit VR Little Endian: the meta with its
    transfer syntax changed, then the data set inflated a chunk at a time, never more than
    max_bytes; the problem (cut or corrupt stream, too large), or None."""
    meta = read_file_meta_info(source)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = DicomBytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)
    target.write(header.getvalue())
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    with open(source, "rb") as handle:
        handle.seek(_meta_end(handle))
        while chunk := handle.read(_INFLATE_CHUNK):
            try:
                while chunk:
                    out = inflater.decompress(chunk, _INFLATE_CHUNK)
                    chunk = inflater.unconsumed_tail
                    written += len(out)
                    if written > max_bytes:
                        return f"larger than {max_bytes // (1024 * 1024)} MB inflated"
                    target.write(out)
                    if inflater.eof:
                        break
            except zlib.error as exc:
                return f"deflate stream corrupt ({exc})"
            if inflater.eof:
                break
    if not inflater.eof:
        return "deflate stream cut short"
    target.finish()
    return None


def _meta_end(handle: BinaryIO) -> int:
    """Where the data set starts: after the preamble and the meta group (its group length)."""
    handle.seek(132)
    group, element, vr = struct.unpack("<HH2s", handle.read(6))
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError("file meta without its group length")
    (length,) = struct.unpack("<HI", handle.read(6))[1:]
    return 132 + 12 + int(length)


def _read_identity_with_pydicom(source: Path | BytesIO) -> Identity | IngestOutcome:
    """What read_identity leaves to pydicom: other encodings, and files it cannot walk."""
    try:
        dataset = dcmread(source, stop_before_pixels=True, specific_tags=_IDENTITY_TAGS,
                          defer_size=HEADER_VALUE_BYTES)
        meta = dataset.file_meta
        sop_uid = str(dataset.SOPInstanceUID)
        return Identity(
            study_uid=str(dataset.StudyInstanceUID),
            series_uid=str(dataset.SeriesInstanceUID),
            sop_instance_uid=sop_uid,
            sop_class_uid=str(dataset.get("SOPClassUID", "")),
            transfer_syntax=str(meta.TransferSyntaxUID),
            media_sop_instance_uid=str(getattr(meta, "MediaStorageSOPInstanceUID", sop_uid)),
            media_sop_class_uid=str(getattr(meta, "MediaStorageSOPClassUID", "")),
        )
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, EOFError,
            OSError, NotImplementedError) as exc:
        log.warning("event=store_rejected reason=unreadable_dataset error=%s",
                    type(exc).__name__)
        return IngestOutcome(IngestResult.UNREADABLE, f"cannot parse dataset: {exc}"[:64])
