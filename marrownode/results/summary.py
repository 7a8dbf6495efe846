"""The marrow summary page: one Secondary Capture per set that a radiologist reads first, in
any PACS viewer at 100 % zoom. Left, the representative slice (the one through most of the
localised marrow) with each vertebral body tinted and named (L3, or V3 when the level is not
fixed) and every focus outlined; right, what was found: the threshold and field strength,
the pattern in words, one row per level, the foci, and the seed's worrisome features as a
checklist saying for each whether this study could assess it and what was found."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from marrownode.quant.analysis import QuantResult
from marrownode.report import FocusReport, SetReport
from marrownode.results.display import DisplayView
from marrownode.results.follow_up_text import (
    change_words,
    focus_labels,
    growth_finding,
    resolved_lines,
)
from marrownode.vocabulary import (
    CompanionKind,
    FatSuppression,
    FocusCategory,
    Margin,
    Pattern,
    only_fat_containing,
    set_meaning,
)

WIDTH, HEIGHT, PANEL = 1400, 1000, 660
DIFFUSE_PATTERNS = (Pattern.DIFFUSE, Pattern.DIFFUSE_AND_FOCAL)
TINTS = ((0, 114, 178), (0, 158, 115))  # Okabe-Ito blue and bluish green, alternating
FOCUS = (240, 228, 66)
WHITE, GREY, ORANGE = (255, 255, 255), (190, 190, 190), (230, 159, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def representative_slice(result: QuantResult) -> int:
    """The slice through the largest focus; without foci, the most central slice among those
    through most of the localised marrow (the midline of a sagittal stack)."""
    if result.focus_masks:
        return int(np.argmax(result.focus_masks[0].sum(axis=(1, 2))))
    counts = (result.localisation.bodies > 0).sum(axis=(1, 2))
    middle = int(result.signal_loss.shape[0]) // 2
    if not counts.any():
        return middle
    candidates = np.flatnonzero(counts >= 0.8 * counts.max())
    return int(candidates[int(np.argmin(np.abs(candidates - middle)))])


def _anatomy(in_phase: np.ndarray, result: QuantResult, names: list[str], k: int,
             view: DisplayView, pixel_spacing_mm: tuple[float, float],
             ) -> tuple[Image.Image, list[tuple[str, tuple[float, float]]], float]:
    """The slice in grey, bodies tinted, foci outlined, turned as viewers hang it and scaled
    into the panel; where to write each body's name (panel coordinates); the panel's pixels
    per displayed column."""
    plane = view.plane(np.nan_to_num(in_phase[k]))
    tissue_mask = view.plane(result.tissue[k])
    tissue = plane[tissue_mask] if tissue_mask.any() else plane.ravel()
    low, high = np.percentile(tissue, 1), np.percentile(tissue, 99)
    grey = np.clip((plane - low) / max(high - low, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    bodies = view.plane(result.localisation.bodies[k])
    for number in range(1, int(result.localisation.bodies.max()) + 1):
        tint = np.array(TINTS[(number - 1) % 2], dtype=float)
        body = bodies == number
        rgb[body] = 0.6 * rgb[body] + 0.4 * tint
    foci = np.zeros(plane.shape, dtype=bool)
    for mask in result.focus_masks:
        foci |= view.plane(mask[k])
    rgb[foci & ~ndimage.binary_erosion(foci)] = FOCUS
    rows, columns = plane.shape
    row_mm, column_mm = view.spacing(pixel_spacing_mm)
    aspect = row_mm / column_mm
    scale = min(PANEL / (rows * aspect), PANEL / columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * aspect * scale)))
    image = Image.fromarray(rgb.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    labels = []
    for number, name in enumerate(names, start=1):
        where = np.argwhere(bodies == number)
        if where.size:
            row, column = where.mean(axis=0)
            labels.append((name, (column * scale, row * aspect * scale)))
    return image, labels, scale


def _edges(draw: ImageDraw.ImageDraw, view: DisplayView, box: tuple[int, int, int, int]) -> None:
    """The patient directions at the picture's edges (S, I, A, P, R, L), as viewers mark
    them: the summary page is a picture without the viewer's own markers."""
    left, top, width, height = box
    font = _font(18)
    up, down, west, east = view.edges
    for letter, where in ((up, (left + width // 2 - 5, top + 4)),
                          (down, (left + width // 2 - 5, top + height - 24)),
                          (west, (left + 6, top + height // 2 - 10)),
                          (east, (left + width - 18, top + height // 2 - 10))):
        draw.text(where, letter, fill=GREY, font=font, stroke_width=2, stroke_fill=(0, 0, 0))


def _contains_fat(focus: FocusReport) -> bool:
    """A fat-containing focus (haemangioma, focal fat): its little loss is its fat's own."""
    return focus.category == FocusCategory.FAT_CONTAINING


def pattern_meaning(report: SetReport) -> str:
    """The set's pattern in words, as the console says them (vocabulary.set_meaning)."""
    return set_meaning(report.pattern, [f.category for f in report.foci])


def _pattern_is_worrying(report: SetReport) -> bool:
    """Coloured as a finding: not normal, not unassessed, and not fat-containing foci alone."""
    return (report.pattern not in (Pattern.NORMAL, Pattern.NOT_ASSESSED)
            and not only_fat_containing(report.pattern, [f.category for f in report.foci]))


def sharp_margin_finding(report: SetReport) -> str:
    """'yes: L1, L3' for sharply marginated foci that are not fat-containing; a sharp
    fat-containing focus is the typical haemangioma, named apart and not counted."""
    if not report.vertebrae:
        return "not assessed"
    sharp = [f for f in report.foci if f.margin == Margin.SHARP]
    worrying = [f.site or "?" for f in sharp if not _contains_fat(f)]
    fatty = [f.site or "?" for f in sharp if _contains_fat(f)]
    found = f"yes: {', '.join(worrying)}" if worrying else "no"
    if fatty:
        found += f" (fat-containing, not counted: {', '.join(fatty)})"
    return found


def _checklist(report: SetReport) -> list[tuple[str, str]]:
    """The seed's worrisome features: for each, what this study showed or why it could not."""
    darker = [v.name for v in report.vertebrae
              if v.in_phase_to_muscle_ratio is not None and v.in_phase_to_muscle_ratio < 1.0]
    assessed = bool(report.vertebrae)
    return [
        ("T1 signal lower than muscle", (f"yes: {', '.join(darker)}" if darker else "no")
         if assessed else "not assessed: no localised marrow"),
        ("diffuse homogeneous abnormal signal",
         ("yes" if report.pattern in DIFFUSE_PATTERNS else "no") if assessed
         else "not assessed"),
        ("sharply marginated focal lesion", sharp_margin_finding(report)),
        ("enhancement after contrast", enhancement_finding(report)),
        ("high signal after fat saturation", fat_saturation_finding(report)),
        ("growth since the prior study", growth_finding(report)),
    ]


def _not_assessed(report: SetReport, kind: CompanionKind, missing: str) -> str:
    """Why a companion feature was not assessed: the first reason given, else missing."""
    companions = report.companions
    if not report.vertebrae:
        return "not assessed: no localised marrow"
    reasons = [item["reason"] for item in (companions["left_out"] if companions else [])
               if item["kind"] == kind]
    return f"not assessed: {reasons[0] if reasons else missing}"


def enhancement_finding(report: SetReport) -> str:
    """'yes: L1 focus +95 %, normal marrow +20 %', 'no: ...', or why not assessed."""
    companions = report.companions
    normal = companions["normal_marrow"] if companions else None
    if not companions or not companions["post_contrast"] or not normal:
        return _not_assessed(report, CompanionKind.POST_CONTRAST, "no post-contrast series")
    baseline = f"normal marrow {_signed(normal['enhancement_percent'])}"
    enhancing = [f"{f.site or 'focus'} focus {_signed(f.enhancement_percent)}"
                 for f in report.foci if f.enhancing]
    if enhancing:
        return f"yes: {', '.join(enhancing)}, {baseline}"
    others = [f"{f.site or 'focus'} focus {_signed(f.enhancement_percent)}"
              for f in report.foci if f.enhancement_percent is not None]
    return f"no: {', '.join([*others, baseline])}"


def fat_saturation_finding(report: SetReport) -> str:
    """'yes: L1 focus 4.1x normal marrow', suppressed fatty foci, 'no', or why not."""
    companions = report.companions
    if not companions or not companions["fat_suppressed"] or not companions["normal_marrow"]:
        return _not_assessed(report, CompanionKind.FAT_SUPPRESSED, "no fat-suppressed series")
    high = [f"{f.site or 'focus'} focus {f.fat_suppressed_ratio:.1f}x"
            for f in report.foci if f.high_signal_after_fat_saturation
            and f.fat_suppressed_ratio is not None]
    high += [f"{v.name} {v.fat_suppressed_ratio:.1f}x" for v in report.vertebrae
             if v.fat_suppressed_ratio is not None and v.fat_suppressed_ratio >= 1.5]
    suppressed = [f"{f.site or 'focus'} fatty focus suppressed completely (benign pattern)"
                  for f in report.foci if f.fat_suppression == FatSuppression.COMPLETE]
    if high:
        return f"yes: {', '.join(high)} normal marrow" + (
            f"; {', '.join(suppressed)}" if suppressed else "")
    return "no" + (f": {', '.join(suppressed)}" if suppressed else ": nothing above 1.5x "
                   "normal marrow")


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+.0f} %"


def _value(number: float | None, digits: int = 0, unit: str = "") -> str:
    return "-" if number is None else f"{number:.{digits}f}{unit}"


def _endplate_lines(draw: ImageDraw.ImageDraw, report: SetReport, x: int, y: int) -> int:
    """The endplate findings, when there are any; returns the next line's y."""
    bands = [(v.name, band) for v in report.vertebrae
             for band in v.endplate_findings]
    if not bands:
        return y
    y += 6
    draw.text((x, y), f"Endplate bands ({len(bands)}), not foci: the Modic type 1 pattern",
              fill=WHITE, font=_font(18))
    y += 26
    for name, band in bands[:4]:
        draw.text((x, y), f"{name} {band['endplate']} endplate: {band['thickness_mm']:.0f} mm"
                  f" thick, loss {_value(band['signal_loss_percent'])} %", fill=GREY,
                  font=_font(16))
        y += 22
    return y


#: Rows of the level table in full-size type; a longer column (a whole spine: 26 levels) is
#: set smaller, and rows beyond MAX_ROWS are counted, not listed (the SR has them all).
ROOMY_ROWS, MAX_ROWS = 9, 28


def _level_table(draw: ImageDraw.ImageDraw, report: SetReport, x: int, y: int) -> int:
    """One row per level (every level, smaller type for a long column); the next y."""
    rows = report.vertebrae
    roomy = len(rows) <= ROOMY_ROWS
    font, step = (_font(18), 24) if roomy else (_font(14), 17)
    columns = (0, 80, 170, 250, 370, 470)  # fixed positions: the font is proportional
    for offset, heading in zip(columns, ("level", "loss %", "fat %", "T1/muscle", "T1/disc",
                                         "pattern"), strict=True):
        draw.text((x + offset, y), heading, fill=WHITE, font=_font(18))
    y += 26
    # a level is focal for its foci: not worrying when each of them contains fat
    worrying_sites = {f.site for f in report.foci if not _contains_fat(f)}
    for v in rows[:MAX_ROWS]:
        cells = (v.name, _value(v.signal_loss_percent_median),
                 _value(v.fat_fraction_percent_median), _value(v.in_phase_to_muscle_ratio, 2),
                 _value(v.in_phase_to_disc_ratio, 2), v.pattern.replace("_", " "))
        calm = v.pattern in (Pattern.NORMAL, Pattern.NOT_ASSESSED) or (
            v.pattern == Pattern.FOCAL and v.name not in worrying_sites)
        colour = WHITE if calm else ORANGE
        for offset, cell in zip(columns, cells, strict=True):
            draw.text((x + offset, y), cell, fill=colour, font=font)
        y += step
    if len(rows) > MAX_ROWS:
        draw.text((x, y), f"... and {len(rows) - MAX_ROWS} more levels (in the SR)", fill=GREY,
                  font=font)
        y += step
    return y


def _text(draw: ImageDraw.ImageDraw, report: SetReport, disclaimer: str) -> None:
    """The right-hand panel: what was found, in words and numbers."""
    title, body, small = _font(24), _font(18), _font(16)
    x, y = PANEL + 30, 18
    field = f"{report.field_strength_t:g} T" if report.field_strength_t else "unknown field"
    threshold = report.signal_loss_threshold_percent
    draw.text((x, y), f"Marrow summary: {report.orientation} set", fill=WHITE, font=title)
    y += 36
    rule = (f"signal loss threshold {threshold:g} % at {field}: above it, normal or benign"
            if threshold is not None else f"no threshold for {field}: not assessed")
    draw.text((x, y), rule, fill=GREY, font=small)
    y += 30
    draw.text((x, y), f"Pattern: {report.pattern.replace('_', ' ').upper()}",
              fill=ORANGE if _pattern_is_worrying(report) else WHITE, font=body)
    y += 24
    draw.text((x, y), pattern_meaning(report), fill=GREY, font=small)
    y += 34
    y = _level_table(draw, report, x, y)
    if not report.vertebrae:
        draw.text((x, y), f"marrow not localised: {report.marrow.reason}"[:70], fill=ORANGE,
                  font=body)
        y += 24
    y += 12
    draw.text((x, y), f"Foci ({len(report.foci)})", fill=WHITE, font=body)
    y += 26
    changes = change_words(report)
    for index, focus in enumerate(report.foci[:6]):
        size = 2.0 * np.sqrt((focus.area_mm2 or 0.0) / np.pi)
        shown = f"{changes[index]}, " if index in changes else f"{size:.0f} mm, "
        extra = (f", enh {_signed(focus.enhancement_percent)}"
                 if focus.enhancement_percent is not None else "") + (
            f", fat-sat {focus.fat_suppressed_ratio:.1f}x"
            if focus.fat_suppressed_ratio is not None else "")
        draw.text((x, y), f"{focus.site or '?'}: {shown}"
                  f"{focus.category.replace('_', ' ')}, loss {_value(focus.signal_loss_percent)}"
                  f" %, margin {focus.margin or '-'}{extra}", fill=FOCUS, font=small)
        y += 22
    for line in resolved_lines(report)[:3]:
        draw.text((x, y), line, fill=GREY, font=small)
        y += 22
    y = _endplate_lines(draw, report, x, y)
    y += 12
    draw.text((x, y), "Worrisome features", fill=WHITE, font=body)
    y += 26
    for feature, finding in _checklist(report):
        colour = ORANGE if finding.startswith("yes") else GREY
        for line in textwrap.wrap(f"{feature}: {finding}", 78, subsequent_indent="    ")[:3]:
            draw.text((x, y), line, fill=colour, font=small)
            y += 22
    y += 12
    if report.marrow.levels_reason:
        for line in textwrap.wrap(f"levels: {report.marrow.levels_reason}", 78)[:3]:
            draw.text((x, y), line, fill=GREY, font=small)
            y += 22
    note = (disclaimer if "diagnosis" in disclaimer
            else f"{disclaimer} Reading aid, not a diagnosis.")
    draw.text((x, HEIGHT - 34), note, fill=GREY, font=small)


def render_summary(in_phase: np.ndarray, result: QuantResult, report: SetReport,
                   pixel_spacing_mm: tuple[float, float], disclaimer: str,
                   view: DisplayView) -> np.ndarray:
    """The page as RGB pixels (HEIGHT x WIDTH). view: how the slice is turned to be read
    (DisplayView.of the set's geometry)."""
    page = Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(page)
    names = [v.name for v in report.vertebrae]
    k = representative_slice(result)
    anatomy, labels, scale = _anatomy(in_phase, result, names, k, view, pixel_spacing_mm)
    top = (HEIGHT - anatomy.height) // 2
    page.paste(anatomy, (10, top))
    size = 20 if len(labels) <= ROOMY_ROWS + 3 else 12  # a whole spine: 26 names, close
    label_font = _font(size)
    for name, (column, row) in labels:
        draw.text((10 + column - 3 * size, top + row - size // 2), name, fill=WHITE,
                  font=label_font, stroke_width=2 if size > 12 else 1, stroke_fill=(0, 0, 0))
    row_mm, column_mm = view.spacing(pixel_spacing_mm)
    for words, (row, column) in (focus_labels(result.focus_masks, report)[k]
                                 if result.focus_masks else []):
        row, column = view.point(row, column, in_phase.shape[1:])
        draw.text((10 + column * scale, top + row * scale * row_mm / column_mm - 8), words,
                  fill=FOCUS, font=_font(16), stroke_width=2, stroke_fill=(0, 0, 0))
    _edges(draw, view, (10, top, anatomy.width, anatomy.height))
    legend = "; yellow outline: focus" if result.focus_masks else ""  # none drawn: no key
    draw.text((10, 8), f"slice {k + 1}{legend}", fill=GREY, font=_font(16))
    _text(draw, report, disclaimer)
    return np.asarray(page)
