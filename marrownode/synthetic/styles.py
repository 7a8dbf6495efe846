"""How each vendor labels its Dixon series (docs/domain.md §3), as data: per style, the series a
scanner sends and the ImageType (and private) labels of their images. Echo times follow from
each image's role and the field strength; a description may name the orientation's protocol."""

from __future__ import annotations

from dataclasses import dataclass

from marrownode.synthetic.dataset import StudyOptions, echo_times_ms

#: Multi-frame styles: written by enhanced.py, not from the table below.
ENHANCED_STYLES = ("philips_enhanced", "philips_enhanced_ffe")


@dataclass(frozen=True)
class ImageLabel:
    """One kind of image in a series: its role, ImageType and Philips private label."""

    role: str  # in_phase | opposed_phase | water | fat | fat_fraction
    image_type: tuple[str, ...]
    private: str | None = None


@dataclass(frozen=True)
class SeriesStyle:
    """A series as a vendor writes it ({protocol} in the description: the orientation's)."""

    key: str
    description: str
    images: tuple[ImageLabel, ...]
    manufacturer: str
    promise_count: bool = True


@dataclass(frozen=True)
class SeriesPlan:
    """One series to emit: which images it holds (role, TE, ImageType, private label)."""

    key: str
    description: str
    images: tuple[tuple[str, float, list[str], str | None], ...]
    manufacturer: str
    scanning_sequence: str = "GR"
    scan_options: str = ""
    promise_count: bool = True


def _siemens(role: str, token: str, kind: str) -> ImageLabel:
    return ImageLabel(role, (kind, "PRIMARY", "M", token, "NORM", "DIS2D"))


def _xa(role: str, token: str) -> ImageLabel:
    return ImageLabel(role, ("DERIVED", "PRIMARY", "DIXON", token, "NORM", "MFSPLIT"))


def _ge(role: str, token: str) -> ImageLabel:
    return ImageLabel(role, ("DERIVED", "PRIMARY", "DIXON", token))


def _philips(role: str, token: str) -> ImageLabel:
    return ImageLabel(role, ("DERIVED", "PRIMARY", token, token, "DERIVED"), token)


_SIEMENS, _XA, _GE = "SIEMENS", "Siemens Healthineers", "GE MEDICAL SYSTEMS"
_LAVA = (
    SeriesStyle("w", "WATER: Sag LAVA-Flex", (_ge("water", "WATER"),), _GE),
    SeriesStyle("f", "FAT: Sag LAVA-Flex", (_ge("fat", "FAT"),), _GE),
    SeriesStyle("ip", "InPhase: Sag LAVA-Flex", (_ge("in_phase", "IN_PHASE"),), _GE),
    SeriesStyle("op", "OutPhase: Sag LAVA-Flex", (_ge("opposed_phase", "OUT_PHASE"),), _GE),
)
_FFE = ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE")

#: Every single-frame style: the series its scanner sends, in order.
STYLE_SERIES: dict[str, tuple[SeriesStyle, ...]] = {
    "siemens": (
        SeriesStyle("op", "{protocol}_opp", (_siemens("opposed_phase", "OUT_PHASE", "ORIGINAL"),),
                    _SIEMENS),
        SeriesStyle("ip", "{protocol}_in", (_siemens("in_phase", "IN_PHASE", "ORIGINAL"),),
                    _SIEMENS),
        SeriesStyle("f", "{protocol}_F", (_siemens("fat", "FAT", "DERIVED"),), _SIEMENS),
        SeriesStyle("w", "{protocol}_W", (_siemens("water", "WATER", "DERIVED"),), _SIEMENS),
    ),
    "siemens_xa": (
        SeriesStyle("op", "t1_vibe_dixon_opp_1", (_xa("opposed_phase", "OPP_PHASE"),), _XA),
        SeriesStyle("ip", "t1_vibe_dixon_in_1", (_xa("in_phase", "IN_PHASE"),), _XA),
        SeriesStyle("w", "t1_vibe_dixon_W_1", (_xa("water", "WATER"),), _XA),
        SeriesStyle("f", "t1_vibe_dixon_F_1", (_xa("fat", "FAT"),), _XA),
    ),
    "ge_lava": _LAVA,
    "ge_idealiq": (*_LAVA, SeriesStyle("ff", "FatFrac: Sag IDEAL IQ",
                                       (_ge("fat_fraction", "FAT_FRACTION"),), _GE)),
    "philips_mdixon": (SeriesStyle("mdixon", "sT1W_mDIXON_SAG", (
        _philips("water", "W"), _philips("fat", "F"), _philips("in_phase", "IP"),
        _philips("opposed_phase", "OP")), "Philips"),),
    "anonymised_dual_echo": (SeriesStyle("dual", "", (
        ImageLabel("opposed_phase", _FFE), ImageLabel("in_phase", _FFE)), "",
        promise_count=False),),
}

STYLES = (*STYLE_SERIES, *ENHANCED_STYLES)


def _protocol(orientation: str) -> str:
    return "t1_vibe_dixon_sag" if orientation == "sagittal" else "t1_vibe_dixon_tra"


def _echo_time(role: str, opposed_ms: float, in_phase_ms: float) -> float:
    """Opposed-phase images at the opposed echo, a fat-fraction map at a nominal 1 ms (its TE
    means nothing), every other image at the in-phase echo."""
    if role == "opposed_phase":
        return opposed_ms
    return 1.0 if role == "fat_fraction" else in_phase_ms


def series_plans(options: StudyOptions) -> list[SeriesPlan]:
    """The series of one study in the options' style."""
    styles = STYLE_SERIES.get(options.style)
    if styles is None:
        raise ValueError(f"unknown style {options.style!r}; choose from {', '.join(STYLES)}")
    opposed_ms, in_phase_ms = echo_times_ms(options.field_strength_t, options.in_phase_first)
    protocol = _protocol(options.orientation)
    return [SeriesPlan(
        style.key, style.description.format(protocol=protocol),
        tuple((label.role, _echo_time(label.role, opposed_ms, in_phase_ms),
               list(label.image_type), label.private) for label in style.images),
        style.manufacturer, promise_count=style.promise_count) for style in styles]


def echo_number(plan: SeriesPlan, role: str) -> int:
    """The image's echo number within its series (1 when the series holds one echo)."""
    roles = [image[0] for image in plan.images]
    return roles.index(role) + 1 if len(roles) > 1 else 1
