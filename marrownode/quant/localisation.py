"""What a marrow localisation is: the vertebral bodies and posterior elements found (or given
by a segmentation), how and why; and the limits the image-based localiser (spine.py) uses.
The analysis, the regions and the requests read this record; only spine.py makes one from
the images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from marrownode import defaults
from marrownode.vocabulary import LocalisationMethod


@dataclass(frozen=True)
class SpineParameters:
    """Tunable limits; millimetres unless named otherwise."""

    #: Normal marrow (~40-80 % fat) loses at least this much; fat and water-rich tissue less.
    mixed_tissue_min_loss_percent: float = defaults.MIXED_TISSUE_MIN_LOSS_PERCENT
    #: Water-rich tissue (CSF, discs, muscle, organs) loses less than this: a barrier.
    water_rich_max_loss_percent: float = 15.0
    #: Void (cortex, CSF, air) is darker than this fraction of the bright end (fat).
    void_relative_signal: float = 0.2
    #: Cortical bone, the frame of the marrow, is darker than this (CSF, a disc's annulus and
    #: partial volume are not: a frame of them would enclose discs too).
    cortex_relative_signal: float = 0.15
    #: ... and a line of it may be broken by partial volume over this many mm.
    cortex_gap_mm: float = 3.0
    #: A cortex partial-volumed into its pixels (a 1 mm line on 0.7-1 mm pixels, with noise):
    #: a thin line whose mean along it lies this fraction of the bright end below the means
    #: beside it, and under cortex_line_ceiling of it (quant/bone.py dark_lines). Sagittal
    #: stacks only. 0.12-0.16 framed a lateral slice's disc, 0.22 missed replaced bodies.
    cortex_line_depth: float = 0.18
    cortex_line_ceiling: float = 0.3
    #: Gaps in the bone's frame up to this wide (mm) are closed: the basivertebral vein's
    #: notch in the posterior wall (4-6 mm), partial volume along a thin cortex.
    frame_gap_mm: float = 7.0
    #: Fat (a fat-rich focus too) is brighter than this fraction of the bright end: no barrier.
    fat_relative_signal: float = 0.7
    #: A body taller than this is two vertebrae joined across a partial-volumed disc.
    max_vertebra_height_mm: float = 42.0
    #: Two bodies whose cranio-caudal extents coincide for this share of the shorter one are
    #: one vertebra (a lesion had cut it apart): one body per level.
    same_level_overlap: float = 0.6
    #: Homogeneous tissue: in-plane gradient below this fraction of the local signal.
    max_relative_gradient: float = 0.15
    rim_radius_mm: float = 2.0
    core_radius_mm: float = 6.0
    min_core_volume_mm3: float = 1500.0
    #: Cervical and upper thoracic bodies (14-18 mm tall) hold no core of core_radius_mm on
    #: 4 mm slices: bone apart from every core is searched again with this radius, and its
    #: cores need only min_small_core_volume_mm3.
    small_core_radius_mm: float = 3.0
    min_small_core_volume_mm3: float = 400.0
    min_small_depth_mm: float = 8.0
    #: A small core fills at least this share of its bounding box: a body's block does
    #: (0.5-0.7), an oblique slab of flat bone (the clivus, about 0.25) does not.
    min_small_fill: float = 0.35
    #: Grids finer than this in-plane are searched on blocks about this size.
    localisation_pixel_mm: float = 2.0
    #: Posterior-element marrow smaller than this is noise (a few voxels in the canal).
    min_element_volume_mm3: float = 150.0
    #: A neural arch with its processes spans at most this (L-R and A-P); anything larger is
    #: muscle and fat behind the spine, not posterior elements.
    max_element_extent_mm: float = 80.0
    min_depth_mm: float = 12.0
    max_depth_mm: float = 65.0
    max_width_mm: float = 75.0
    max_height_mm: float = 70.0
    max_midline_offset_mm: float = 35.0
    column_tolerance_mm: float = 20.0
    max_gap_mm: float = 80.0
    min_vertebrae: int = 2


@dataclass
class Localisation:
    """bodies: 0 outside, n for the n-th vertebral body cranio-caudally; posterior: the same
    numbers for posterior-element marrow; labels[n - 1] names body n."""

    localised: bool
    method: LocalisationMethod
    reason: str
    bodies: np.ndarray
    posterior: np.ndarray
    labels: list[str] = field(default_factory=list)
    #: Per body its anatomical name ("L3") when the anatomy fixes the count, else None.
    levels: list[str | None] = field(default_factory=list)
    #: How the names were fixed, or why they were not.
    levels_reason: str = ""

    @property
    def marrow(self) -> np.ndarray:
        """All localised vertebral marrow (bodies and posterior elements)."""
        marrow: np.ndarray = (self.bodies > 0) | (self.posterior > 0)
        return marrow


def not_localised(shape: tuple[int, ...], reason: str) -> Localisation:
    """Maps only: no marrow is claimed anywhere."""
    empty = np.zeros(shape, dtype=np.int16)
    return Localisation(False, LocalisationMethod.NONE, reason, empty, empty.copy())
