"""The analysis defaults, declared once: [analysis] in the configuration and quant/'s
parameter records both take them from here, so `marrownode process` without a configuration,
the node with the embedded defaults and quant/ called directly all analyse alike.
Pure constants: every room may use them."""

from __future__ import annotations

#: (field strength in T, signal loss threshold in %): loss above it points to normal or
#: benign marrow (> 20 % at 1.5 T, > 25 % at 3 T; docs/domain.md §1).
THRESHOLDS: tuple[tuple[float, float], ...] = ((1.5, 20.0), (3.0, 25.0))
#: The nearest threshold entry applies within this many tesla of the set's field strength.
FIELD_STRENGTH_TOLERANCE_T = 0.25
#: A focus smaller than this is not reported.
MIN_FOCUS_VOLUME_MM3 = 50.0
#: A focal lesion is at least this wide in-plane (the whole-body myeloma imaging definition,
#: MY-RADS: 5 mm); smaller low-loss spots are micronodules, counted per vertebra.
MIN_FOCUS_DIAMETER_MM = 5.0
#: In-phase-first pairs: foci within this margin of the threshold are 'indeterminate' (T2*).
IN_PHASE_FIRST_MARGIN_PERCENT = 6.0
#: Normal marrow (~40-80 % fat) loses at least this much; fat and water-rich tissue less.
MIXED_TISSUE_MIN_LOSS_PERCENT = 30.0
