"""The settings' schema: every section and key with its type, limits and default (pydantic).

Every key is optional; a missing file section means the embedded defaults. The analysis
defaults here are the only ones: quant/ takes its parameters from them (config/__init__.py
explains how a configuration is read; errors.py words its errors)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from marrownode import defaults
from marrownode.config.priors import PriorSettings

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # printable ASCII without backslash


class _Section(BaseModel):
    # strict: TOML has types; "11112" is not a port and "yes" is not a boolean (only paths,
    # which TOML writes as strings, are converted: StrictPath below).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank (spaces only)")
    return value


def _host(value: str) -> str:
    """An IP address or a host name, without a port (a port has its own key)."""
    if not value:
        raise ValueError("must not be empty")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if ":" in value or "/" in value or not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", value):
        raise ValueError(f"must be an IP address or a host name, without a port (got {value!r};"
                         " the port has its own key)")
    return value


AETitle = Annotated[str, Field(pattern=AE_TITLE_PATTERN), AfterValidator(_not_blank)]
Port = Annotated[int, Field(ge=1, le=65535)]
Host = Annotated[str, AfterValidator(_host)]
#: TOML has no path type: paths are strings, converted.
StrictPath = Annotated[Path, Field(strict=False)]


class TLSSettings(_Section):
    """Paths may name systemd credentials: "${CREDENTIALS_DIRECTORY}/tls-key" with
    LoadCredential=tls-key:/etc/marrownode/tls/node.key in the unit, so the key is readable by
    the unit's dynamic user without being readable by anyone else."""

    cert: StrictPath
    key: StrictPath
    #: With a CA, client certificates are verified against it: a CA is configured to be used.
    ca: StrictPath | None = None
    require_client_cert: bool = False

    @field_validator("cert", "key", "ca", mode="before")
    @classmethod
    def _credentials(cls, value: Any) -> Any:
        if isinstance(value, str) and "${CREDENTIALS_DIRECTORY}" in value:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ValueError("names ${CREDENTIALS_DIRECTORY}, which systemd sets only "
                                 "inside a unit with LoadCredential=")
            return value.replace("${CREDENTIALS_DIRECTORY}", directory)
        return value

    @model_validator(mode="after")
    def _ca_means_verify(self) -> TLSSettings:
        if self.ca is not None and not self.require_client_cert:
            return self.model_copy(update={"require_client_cert": True})
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs a ca to verify client certificates")
        return self


#: Receiving processes of one node at most.
MAX_RECEIVING_PROCESSES = 16


class NodeSettings(_Section):
    ae_title: AETitle = "MARROWNODE"
    host: Host = "127.0.0.1"
    port: Port = 11112
    allowed_calling_aets: list[AETitle] = []
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    tls: TLSSettings | None = None
    network_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: The whole A-ASSOCIATE-RQ must arrive within this of the connection (PS3.8 ARTIM).
    artim_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    #: ... and within this, if shorter: a scanner sends its request at once, a trickle is cut.
    request_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    #: Connections that have not associated yet, at most. When all are taken, the one that
    #: has waited longest (over a second) gives its slot to the new connection; only when
    #: every one is younger is the new one refused (A-ASSOCIATE-RJ, local limit).
    max_pending_connections: Annotated[int, Field(ge=1, le=1000)] = 32
    #: ... and from one address at most (the same eviction within the address's share).
    max_pending_per_address: Annotated[int, Field(ge=1, le=1000)] = 16
    #: Largest P-DATA-TF PDU the node accepts, announced in the A-ASSOCIATE-AC.
    maximum_pdu_size: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 65536
    #: Processes accepting from the node's listening socket; each new association goes to the
    #: one holding the fewest, so parallel senders are not limited by one Python interpreter
    #: (default: the cores this process may use, at most 4). max_associations holds for all
    #: together.
    receiver_processes: int = Field(  # each has a slot in net/stats.py's shared counters
        default_factory=lambda: min(4, len(os.sched_getaffinity(0))), ge=1,
        le=MAX_RECEIVING_PROCESSES)


def _default_storage_root() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere a folder in the working dir.
    state = os.environ.get("STATE_DIRECTORY")
    return Path(state.split(":")[0]) if state else Path("marrownode-data")


class StorageSettings(_Section):
    root: StrictPath = Field(default_factory=_default_storage_root)
    min_free_mb: Annotated[int, Field(ge=0)] = 1024
    retention_hours: Annotated[float, Field(gt=0)] = 72.0
    #: The largest data set a deflated instance may inflate to (refused with 0xA700 beyond).
    max_instance_mb: Annotated[int, Field(ge=1, le=1_048_576)] = 4096


class CompletionSettings(_Section):
    #: Only when content cannot decide: a study is complete this long after its last instance.
    idle_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    #: Calling AE titles of PACS peers that forward a study whole, in associations that end
    #: with it (an Orthanc OnStableStudy rule): series they sent without an image count are
    #: complete when those associations have ended, without waiting for idle_seconds.
    whole_study_senders: list[AETitle] = []


class ThresholdEntry(_Section):
    field_strength_t: Annotated[float, Field(gt=0, le=20)]
    signal_loss_percent: Annotated[float, Field(gt=0, lt=100)]


class AnalysisSettings(_Section):
    thresholds: list[ThresholdEntry] = [
        ThresholdEntry(field_strength_t=field, signal_loss_percent=loss)
        for field, loss in defaults.THRESHOLDS]
    field_strength_tolerance_t: Annotated[float, Field(gt=0, le=1.0)] = (
        defaults.FIELD_STRENGTH_TOLERANCE_T)
    min_focus_volume_mm3: Annotated[float, Field(ge=0)] = defaults.MIN_FOCUS_VOLUME_MM3
    #: A focal lesion is at least this wide in-plane; smaller spots are micronodules.
    min_focus_diameter_mm: Annotated[float, Field(ge=0, le=50)] = defaults.MIN_FOCUS_DIAMETER_MM
    in_phase_first_margin_percent: Annotated[float, Field(ge=0, le=30)] = (
        defaults.IN_PHASE_FIRST_MARGIN_PERCENT)
    mixed_tissue_min_loss_percent: Annotated[float, Field(gt=0, le=90)] = (
        defaults.MIXED_TISSUE_MIN_LOSS_PERCENT)
    #: An analysis still running after this long is stopped (its worker process restarted).
    time_limit_seconds: Annotated[float, Field(ge=10, le=86400)] = 900.0
    #: /healthz degrades when the running analysis reports no progress for this long (far
    #: below the time limit: a hung worker is seen long before it is stopped).
    stall_seconds: Annotated[float, Field(ge=1, le=86400)] = 120.0
    #: Analysis processes, each one study at a time (default: one fewer than the cores this
    #: process may use, at least one: receiving keeps a core).
    workers: int = Field(default_factory=lambda: max(1, len(os.sched_getaffinity(0)) - 1),
                         ge=1, le=256)

    @field_validator("thresholds")
    @classmethod
    def _distinct_field_strengths(cls, value: list[ThresholdEntry]) -> list[ThresholdEntry]:
        strengths = [entry.field_strength_t for entry in value]
        if len(set(strengths)) != len(strengths):
            raise ValueError("each field_strength_t may appear only once")
        return value


class Destination(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    ae_title: AETitle
    host: Host
    port: Port
    #: "c-get": when a measurement request arrives for a study whose images are gone (removed
    #: by retention), fetch its MR images back from this destination (it must allow C-GET
    #: from node.ae_title).
    retrieve: Literal["none", "c-get"] = "none"
    #: How long an association request and each DIMSE answer may take before this
    #: destination's attempt ends (each destination is served on its own: a slow or hung one
    #: delays only its own results).
    association_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    dimse_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0


WebhookEvent = Literal["analysis_failed", "delivery_failed"]


class Webhook(_Section):
    """A URL told (JSON POST) when an analysis or a delivery has failed for good."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    events: list[WebhookEvent] = ["analysis_failed", "delivery_failed"]


class OutputSettings(_Section):
    #: The marrow summary page (a Secondary Capture), first of each set's result series.
    summary: bool = True
    parametric_map: bool = True
    derived_mr: bool = True
    overlay: bool = True
    sr: bool = True
    segmentation: bool = True
    uid_root: Annotated[str, Field(pattern=r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*$", max_length=40)] = (
        "2.25"
    )
    disclaimer: Annotated[str, Field(max_length=120)] = (
        "marrownode: research aid, not a diagnosis. Verify on source images."
    )
    series_number_base: Annotated[int, Field(ge=1, le=2**31 - 1000)] = 9000


#: [analysis] keys that change no result (when an analysis is stopped is not what it finds).
_NOT_CONTENT = {"time_limit_seconds", "stall_seconds", "workers"}


def content_digest(settings: Settings) -> str:
    """A short digest of every setting that changes what the results say or how they are
    laid out ([analysis] and [outputs]): part of every output UID, so different content never
    reuses a UID and identical settings give identical UIDs (idempotent re-sends)."""
    content = {"analysis": settings.analysis.model_dump(mode="json", exclude=_NOT_CONTENT),
               "outputs": settings.outputs.model_dump(mode="json")}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


ConsoleRole = Literal["admin", "read-only"]


class ConsoleUser(_Section):
    """One person or script allowed into the web console: a password (people) or a token
    (scripts, as `Authorization: Bearer`), stored only as hashes."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$")]
    role: ConsoleRole = "read-only"
    password_hash: str = ""
    token_sha256: Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")] = ""

    @field_validator("password_hash")
    @classmethod
    def _a_hash(cls, value: str) -> str:
        if value and not re.fullmatch(r"(scrypt|pbkdf2):[^$]+\$[^$]+\$[0-9a-f]+", value):
            raise ValueError("must be a hash made by `marrownode hash-password` "
                             "(scrypt:… or pbkdf2:…), never the password itself")
        return value

    @model_validator(mode="after")
    def _has_credential(self) -> ConsoleUser:
        if not self.password_hash and not self.token_sha256:
            raise ValueError("give password_hash (`marrownode hash-password`) or token_sha256 "
                             "(`marrownode new-token`), or both")
        return self


class HTTPSettings(_Section):
    enabled: bool = True
    host: Host = "127.0.0.1"
    port: Port = 8642
    console: bool = True  # the web console at /; /healthz, /metrics, /status are always served
    secure_cookies: bool = True  # browsers send them over HTTPS, and to http://127.0.0.1 only
    session_minutes: Annotated[int, Field(ge=5, le=10080)] = 480
    users: list[ConsoleUser] = []

    @field_validator("users")
    @classmethod
    def _distinct_names(cls, users: list[ConsoleUser]) -> list[ConsoleUser]:
        names = [user.name for user in users]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"user names must be distinct (twice: {', '.join(twice)})")
        return users


class LoggingSettings(_Section):
    format: Literal["kv", "json"] = "kv"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value
    include_phi: bool = False


class OutboxSettings(_Section):
    """Backoff per destination, and when a result that cannot be delivered is given up."""

    retry_initial_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    retry_max_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    give_up_after_hours: Annotated[float, Field(gt=0, le=8760)] = 168.0
    #: /healthz degrades when a destination that answers has had a row due (or one being
    #: sent) for this long: the deliveries make no progress.
    stall_seconds: Annotated[float, Field(ge=1, le=86400)] = 300.0

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_attempts" in data:
            raise ValueError("max_attempts is no longer used: deliveries give up after a time, "
                             "set give_up_after_hours instead")
        return data

    @model_validator(mode="after")
    def _ordered(self) -> OutboxSettings:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must be >= retry_initial_seconds")
        return self


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = Field(default_factory=StorageSettings)
    completion: CompletionSettings = CompletionSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    destinations: list[Destination] = []
    outputs: OutputSettings = OutputSettings()
    http: HTTPSettings = HTTPSettings()
    logging: LoggingSettings = LoggingSettings()
    outbox: OutboxSettings = OutboxSettings()
    webhooks: list[Webhook] = []
    priors: PriorSettings = PriorSettings()

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be unique")
        return value

    @model_validator(mode="after")
    def _ports_apart(self) -> Settings:
        if self.http.enabled and self.http.port == self.node.port:
            raise ValueError(f"http.port and node.port are both {self.node.port}: the DICOM "
                             "and HTTP listeners need ports of their own")
        names = [d.name for d in self.destinations]
        if self.priors.query and self.priors.query not in names:
            raise ValueError(f"priors.query names destination {self.priors.query!r}, which is "
                             f"not among [[destinations]] ({', '.join(names) or 'none'})")
        return self

    def warnings(self) -> list[str]:
        """Valid, but probably not what was meant."""
        found = []
        if not self.destinations:
            found.append("no [[destinations]]: results are made but sent nowhere")
        if not self.node.allowed_calling_aets:
            found.append("node.allowed_calling_aets is empty: any calling AE title is accepted")
        http = self.http
        if http.enabled and http.console and not http.users:
            found.append("http.console is on but there are no [[http.users]]: nobody can log in "
                         "(add one with `marrownode hash-password`)")
        if http.enabled and not _loopback(http.host):
            found.append(f"http.host {http.host} is not loopback: serve the console through a "
                         "TLS reverse proxy (docs/console.md) and restrict who reaches the port")
        return found


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
