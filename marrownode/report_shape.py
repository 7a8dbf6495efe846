"""report.json's shape as TypedDicts: the contract of docs/architecture.md in types.

report.py generates these from its records; the pipeline returns them, the node keeps them in
its index and hands them to the deliverer, the console and the CLI read them. With mypy
strict, a misspelt key or a value of the wrong kind anywhere on that path is an error instead
of a silent None. Keys are added, never renamed. Below report.py, results/ and store/, which
all use it; it uses only the vocabulary.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from marrownode.vocabulary import (
    ChangeStatus,
    CompanionKind,
    Endplate,
    EnhancementImage,
    FatFractionMethod,
    FatSuppression,
    Flag,
    FocusCategory,
    LocalisationMethod,
    Margin,
    OutputKind,
    Pattern,
    PriorSource,
)


class OutputEntry(TypedDict):
    """One result object written (outputs[]); the overlay's slices say what they show."""

    kind: OutputKind
    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    path: str  # relative to the output folder
    series_number: NotRequired[int]
    series_description: NotRequired[str]
    slice_index: NotRequired[int]
    marrow_voxels: NotRequired[int]
    focus_voxels: NotRequired[int]


class SeriesShape(TypedDict):
    """A source series a set uses; echoes carry their echo time."""

    series_instance_uid: str
    series_description: str
    images: int
    evidence: str
    echo_time_ms: NotRequired[float | None]


class WaterFatCheckShape(TypedDict):
    """How far the scanner's water and fat agree with in- and opposed-phase (relative medians),
    and what the images' noise alone gives."""

    sum_error: float | None
    difference_error: float | None
    noise_error: float | None


class MarrowShape(TypedDict):
    """Whether the marrow was localised, how, and why."""

    localised: bool
    method: LocalisationMethod
    reason: str
    levels_reason: NotRequired[str]


class PosteriorElements(TypedDict):
    """The posterior elements of a vertebra, kept apart from its body."""

    voxel_count: int
    signal_loss_percent_median: float | None


class EndplateFindingShape(TypedDict):
    """A low-loss band along one endplate (the Modic type 1 pattern): an endplate finding,
    not a focal lesion."""

    endplate: Endplate
    thickness_mm: float
    signal_loss_percent: float | None


class VertebraShape(TypedDict):
    """One localised vertebral body."""

    label: str
    level: str | None  # "L3" when the anatomy fixes the count, else None (levels_uncertain)
    centroid_patient_mm: list[float]
    voxel_count: int
    volume_mm3: float | None
    signal_loss_percent_median: float | None
    sir_median: float | None
    fat_fraction_percent_median: float | None
    fraction_below_threshold: float | None
    pattern: Pattern
    in_phase_to_muscle_ratio: float | None
    in_phase_to_disc_ratio: float | None
    posterior_elements: PosteriorElements
    tracking_uid: str
    micronodule_count: int  # low-loss spots narrower than a focal lesion (under 5 mm)
    endplate_findings: list[EndplateFindingShape]
    enhancement_percent: float | None  # (post - pre) / pre, post-contrast twin (companions)
    enhancement_ratio_to_normal: float | None
    fat_suppressed_ratio: float | None  # over the study's normal marrow, same series


class FocusShape(TypedDict):
    """One focus inside localised marrow."""

    vertebra: str | None
    level: str | None
    slice_count: int
    slice_indices: list[int]
    area_mm2: float | None
    volume_mm3: float | None
    voxel_count: int
    centroid_patient_mm: list[float]
    signal_loss_percent: float | None
    sir: float | None
    fat_fraction_percent: float | None
    below_threshold: bool
    category: FocusCategory
    margin_sharpness: float | None
    margin: Margin | None
    in_phase_to_marrow_ratio: float | None
    enhancement_percent: float | None
    enhancement_ratio_to_normal: float | None
    enhancing: bool | None  # None: no post-contrast twin
    fat_suppressed_ratio: float | None
    high_signal_after_fat_saturation: bool | None  # None: no fat-suppressed series
    fat_suppression: FatSuppression | None  # fat-containing foci only
    tracking_uid: str  # kept from the prior's focus it matches on follow-up


class CompanionSeriesShape(TypedDict):
    """A series that joined the set, why it was recognised, and how much marrow it covers."""

    series_instance_uid: str
    series_description: str
    images: int
    evidence: list[str]
    coverage_percent: float | None  # of the localised marrow, after resampling
    image: NotRequired[EnhancementImage]  # post-contrast: which image pair was compared


class LeftOutShape(TypedDict):
    """A series that could have joined the set, and why it did not."""

    series_instance_uid: str
    series_description: str
    kind: CompanionKind
    reason: str


class NormalMarrowShape(TypedDict):
    """The patient's own normal marrow, the reference of every companion rule."""

    reference: str
    enhancement_percent: float | None
    fat_suppressed_signal: float | None


class CompanionsShape(TypedDict):
    """The set's post-contrast twin and fat-suppressed series (docs/companions.md)."""

    post_contrast: CompanionSeriesShape | None
    fat_suppressed: CompanionSeriesShape | None
    left_out: list[LeftOutShape]
    normal_marrow: NormalMarrowShape | None


class T1Reference(TypedDict):
    """The in-phase internal standards of the set."""

    muscle_in_phase: float | None
    disc_in_phase: float | None


class SetShape(TypedDict):
    """One Dixon set; a failed set carries its reason and no numbers."""

    key: str
    orientation: str
    in_phase: SeriesShape
    opposed_phase: SeriesShape
    water: SeriesShape | None
    fat: SeriesShape | None
    scanner_fat_fraction: SeriesShape | None
    field_strength_t: float | None
    flags: list[Flag]
    state: str
    signal_loss_threshold_percent: float | None
    foci: list[FocusShape]
    outputs: list[OutputEntry]
    reason: NotRequired[str]
    threshold_field_strength_t: NotRequired[float | None]
    fat_fraction_method: NotRequired[FatFractionMethod | None]
    fat_fraction_label: NotRequired[str]
    noise_sigma: NotRequired[float | None]
    noise_source: NotRequired[str]
    water_fat_check: NotRequired[WaterFatCheckShape | None]
    marrow: NotRequired[MarrowShape]
    pattern: NotRequired[Pattern]
    marrow_summary: NotRequired[dict[str, float | int | None] | None]
    t1_reference: NotRequired[T1Reference]
    vertebrae: NotRequired[list[VertebraShape]]
    companions: NotRequired[CompanionsShape]
    comparison: NotRequired[ComparisonShape | None]


class PriorBodyShape(TypedDict):
    """A vertebral body of the prior, as the prior's report or SR gave it."""

    name: str  # its level (L3) or, unnamed, its number (V3)
    centroid_patient_mm: list[float]  # in the prior's own patient coordinates
    signal_loss_percent_median: float | None
    fat_fraction_percent_median: float | None


class PriorFocusShape(TypedDict):
    """A focus of the prior."""

    site: str | None  # its level or body name
    centroid_patient_mm: list[float]
    volume_mm3: float
    tracking_uid: str


class PriorSetShape(TypedDict):
    """One analysed set of the prior."""

    orientation: str
    pattern: Pattern
    vertebrae: list[PriorBodyShape]
    foci: list[PriorFocusShape]


class ObjectReference(TypedDict):
    """A DICOM object by its UIDs (the prior's SR)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


class PriorShape(TypedDict):
    """The patient's earlier study, as far as a comparison needs it (the node's memory: from
    a report in its index or the inputs, or from its own SR in the PACS)."""

    study_instance_uid: str
    study_date: str
    study_time: str
    source: PriorSource
    sets: list[PriorSetShape]
    report: NotRequired[ObjectReference]  # the prior's marrownode SR, when known


class ComparedPrior(TypedDict):
    """Which study the comparison is against, and where it was found."""

    study_instance_uid: str
    study_date: str
    source: PriorSource
    report: NotRequired[ObjectReference]  # the prior's SR, which this set's SR names


class AlignmentShape(TypedDict):
    """How the prior's positions were carried into this study."""

    method: str  # rigid | translation | none
    levels: list[str]
    residual_mm: float | None


class ComparedFocus(TypedDict):
    """One focus against the prior: new, grown, stable, smaller or resolved."""

    status: ChangeStatus
    level: str | None
    centroid_patient_mm: list[float]  # current; a resolved focus: the prior's, aligned
    volume_mm3: float | None  # None: resolved
    prior_volume_mm3: float | None  # None: new
    diameter_mm: float | None
    prior_diameter_mm: float | None
    tracking_uid: str
    focus_index: int | None  # into the set's foci; None: resolved


class ComparedVertebra(TypedDict):
    """A level in both studies: its medians now and then."""

    level: str
    signal_loss_percent_median: float | None
    prior_signal_loss_percent_median: float | None
    fat_fraction_percent_median: float | None
    prior_fat_fraction_percent_median: float | None


class PatternChange(TypedDict):
    """The set's pattern now and in the prior."""

    prior: Pattern
    current: Pattern
    changed: bool


class ComparisonRule(TypedDict):
    """The rule the statuses follow (docs/follow-up.md)."""

    grown_percent: float
    grown_min_mm: float
    match_distance_mm: float


class ComparisonShape(TypedDict):
    """A set against the patient's prior (shared/DESIGN.md names the first keys)."""

    prior: ComparedPrior
    foci: list[ComparedFocus]
    vertebrae: list[ComparedVertebra]
    alignment: AlignmentShape
    pattern: PatternChange
    rule: ComparisonRule


class RequestShape(TypedDict):
    """A measurement request found in the study, its measured regions and its answer."""

    sop_instance_uid: str
    kind: str
    measurements: list[dict[str, object]]
    outputs: list[OutputEntry]
    state: NotRequired[str]  # "failed" when answering it raised
    reason: NotRequired[str]


class SkippedSeries(TypedDict):
    """A series left out of every set, with the reason."""

    series_instance_uid: str
    reason: str


class StudyShape(TypedDict):
    """One study's report: what the node keeps in its index and serves as report.json."""

    study_instance_uid: str
    dixon_sets: list[SetShape]
    requests: list[RequestShape]
    skipped_series: list[SkippedSeries]
    state: NotRequired[str]  # "failed" when the study could not be read at all (process)
    reason: NotRequired[str]


class UnreadableFile(TypedDict):
    """A file `process` could not read as DICOM."""

    path: str
    reason: str


class ProcessShape(TypedDict):
    """The whole report.json of `marrownode process`."""

    marrownode_version: str
    algorithm_version: str
    studies: list[StudyShape]
    unreadable_files: list[UnreadableFile]
