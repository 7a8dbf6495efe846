"""Colour overlay Secondary Capture: in-phase anatomy in grey, signal loss colour-coded around the
threshold with a colour-blind-safe diverging map inside localised vertebral marrow only, foci
outlined, each body named beside it (L3, or V3 where the level is not fixed), and a burned-in
legend stating what was localised, the pattern and the flags (the SC carries no geometry, so
everything a reader needs is in the pixels)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from marrownode.quant.masks import label_boxes
from marrownode.results.common import MANUFACTURER, SourceSeries, sibling_instance, stamp

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
VERMILLION = np.array([213, 94, 0], dtype=np.float32)  # little or no loss: suspicious
BLUE = np.array([0, 114, 178], dtype=np.float32)  # loss above threshold: fat present
YELLOW = (240, 228, 66)  # focus outline
MIN_SIZE = 512
LEGEND_HEIGHT = 136
#: A body is named on a slice where its section is at least this share of its largest one
#: (its edge slices would only crowd the names).
LABEL_MIN_SECTION = 0.25

#: A body's name and where to write it: (row, first column) of its section on the slice.
BodyLabel = tuple[str, tuple[float, float]]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def colour_for_loss(loss: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """RGB colour and opacity per voxel: vermillion below the threshold, blue above, stronger
    the further from it; transparent where undefined."""
    defined = np.isfinite(loss)
    centre = 20.0 if threshold is None else threshold
    below = np.clip((centre - np.nan_to_num(loss, nan=centre)) / max(centre, 1.0), 0, 1)
    above = np.clip((np.nan_to_num(loss, nan=centre) - centre) / max(100 - centre, 1.0), 0, 1)
    colour = np.where((below > 0)[..., None], VERMILLION, BLUE)
    alpha = np.where(below > 0, 0.35 + 0.5 * below, 0.15 + 0.35 * above)
    alpha = np.where(defined, alpha, 0.0).astype(np.float32)
    return colour, alpha


def _grey(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.nan_to_num(plane) - low) / max(high - low, 1e-6)
    grey: np.ndarray = (np.clip(scaled, 0, 1) * 255).astype(np.float32)
    return grey


class OverlayRenderer:
    """Renders the overlay frames of one set.

    The legend band is the same on every slice but for the slice label, so it is drawn once per
    set; each slice is blended at its native size in 8 bits and only then enlarged, because the
    enlarged float image cost ten times more than everything else together.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        window: tuple[float, float],
        threshold: float | None,
        field_strength_t: float | None,
        disclaimer: str,
        status: str = "",
    ) -> None:
        self.window = window
        self.status = status
        self.threshold = threshold
        self.factor = max(1, math.ceil(MIN_SIZE / max(shape)))
        self.height, self.width = shape[0] * self.factor, shape[1] * self.factor
        self.canvas_width = max(self.width, MIN_SIZE)
        field = f"{field_strength_t:g} T" if field_strength_t else "unknown field"
        rule = (f"threshold {threshold:g} % at {field}" if threshold is not None
                else f"no threshold at {field}")
        self._title = f"Signal loss (IP-OP)/IP | {rule} | "
        self._title_font = _font(16)
        self._legend = self._draw_legend(disclaimer)
        # Outline thickness in output pixels: at least 2, whatever the enlargement.
        self._outline_iterations = max(1, math.ceil(2 / self.factor))

    def _draw_legend(self, disclaimer: str) -> np.ndarray:
        """The legend band without the slice label (drawn per slice)."""
        small = _font(13)
        white = (255, 255, 255)
        threshold = self.threshold
        bar_y, bar_x0, bar_x1 = 28, 8, self.canvas_width - 8
        values = np.linspace(0, 100, bar_x1 - bar_x0)
        bar_colour, bar_alpha = colour_for_loss(values, threshold)
        bar = (128 * (1 - bar_alpha[:, None]) + bar_colour * bar_alpha[:, None]).astype(np.uint8)
        pixels = np.zeros((LEGEND_HEIGHT, self.canvas_width, 3), dtype=np.uint8)
        pixels[bar_y:bar_y + 13, bar_x0:bar_x1] = bar[None, :, :]
        band = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(band)
        draw.text((bar_x0, bar_y + 14), "0 %", fill=white, font=small)
        draw.text((bar_x1 - 42, bar_y + 14), "100 %", fill=white, font=small)
        if threshold is not None:
            tx = bar_x0 + int((bar_x1 - bar_x0) * threshold / 100)
            draw.line([(tx, bar_y - 3), (tx, bar_y + 15)], fill=white, width=2)
            draw.text((tx - 14, bar_y + 14), f"{threshold:g} %", fill=white, font=small)
        y = bar_y + 32
        draw.text((8, y), "orange: loss below threshold", fill=tuple(int(v) for v in VERMILLION),
                  font=small)
        draw.text((200, y), "blue: above (fat present)", fill=(86, 180, 233), font=small)
        draw.text((380, y), "yellow: focus", fill=YELLOW, font=small)
        for line, text in enumerate(self.status.split("\n")[:2]):
            draw.text((8, y + 18 * (line + 1)), text[:110], fill=(255, 255, 255), font=small)
        draw.text((8, y + 54), disclaimer, fill=(200, 200, 200), font=small)
        return np.asarray(band)

    def render(
        self, anatomy: np.ndarray, loss: np.ndarray, focus_mask: np.ndarray,
        marrow: np.ndarray, slice_label: str, labels: Sequence[BodyLabel] = (),
        notes: Sequence[BodyLabel] = (),
    ) -> np.ndarray:
        """One RGB uint8 frame, at least 512 px wide, with the legend band below the image.

        Colour only inside localised marrow: elsewhere the anatomy stays plain grey. Colours
        use a smoothed copy of the map (display only; numbers come from the maps). notes:
        words beside a focus ('NEW'), written from their position on, in the focus colour.
        """
        grey = _grey(anatomy, *self.window)
        image = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
        if marrow.any():  # colour is blended inside the marrow's box only: grey elsewhere
            rows, columns = np.nonzero(marrow)
            box = (slice(max(int(rows.min()) - 1, 0), int(rows.max()) + 2),
                   slice(max(int(columns.min()) - 1, 0), int(columns.max()) + 2))
            image[box] = self._blend(grey[box], loss[box], marrow[box])
        if focus_mask.any():  # outside the foci's box the mask is empty, as erosion's border
            rows, columns = np.nonzero(focus_mask)
            box = (slice(int(rows.min()), int(rows.max()) + 1),
                   slice(int(columns.min()), int(columns.max()) + 1))
            inner = ndimage.binary_erosion(focus_mask[box], iterations=self._outline_iterations)
            image[box][focus_mask[box] & ~inner] = YELLOW
        if self.factor > 1:
            image = np.repeat(np.repeat(image, self.factor, axis=0), self.factor, axis=1)
        if labels:
            image = self._name_bodies(image, labels)
        if notes:
            canvas = Image.fromarray(image)
            draw = ImageDraw.Draw(canvas)
            for words, (row, column) in notes:
                draw.text((column * self.factor, row * self.factor - 8), words, fill=YELLOW,
                          font=self._title_font, stroke_width=2, stroke_fill=(0, 0, 0))
            image = np.asarray(canvas)
        frame = np.zeros((self.height + LEGEND_HEIGHT, self.canvas_width, 3), dtype=np.uint8)
        left = (self.canvas_width - self.width) // 2
        frame[:self.height, left:left + self.width] = image
        frame[self.height:] = self._legend
        label = Image.fromarray(frame[self.height:self.height + 24])
        title = self._title + slice_label
        font = self._title_font
        for size in (14, 13, 12, 11, 10):  # a long slice note: smaller type, never cut off
            if font.getlength(title) <= self.canvas_width - 16:
                break
            font = _font(size)
        ImageDraw.Draw(label).text((8, 4), title, fill=(255, 255, 255), font=font)
        frame[self.height:self.height + 24] = np.asarray(label)
        return frame

    def _blend(self, grey: np.ndarray, loss: np.ndarray, marrow: np.ndarray) -> np.ndarray:
        """The signal-loss colour over the grey anatomy, where there is marrow (the box given
        reaches one pixel beyond it, what the 3 x 3 smoothing reads)."""
        defined = np.isfinite(loss)
        # Normalised 3x3 mean over defined voxels (display only): calmer colours at SNR ~30.
        weight = ndimage.uniform_filter(defined.astype(np.float32), size=3)
        total = ndimage.uniform_filter(np.where(defined, loss, 0).astype(np.float32), size=3)
        smooth = np.where(defined, total / np.maximum(weight, 1e-6), np.nan)
        colour, alpha = colour_for_loss(smooth, self.threshold)
        alpha = np.where(marrow, alpha, 0.0)
        rgb = grey[..., None] * (1 - alpha[..., None]) + colour * alpha[..., None]
        blended: np.ndarray = np.clip(rgb, 0, 255).astype(np.uint8)
        return blended

    def _name_bodies(self, image: np.ndarray, labels: Sequence[BodyLabel]) -> np.ndarray:
        """Each body's name just before its first column (anterior on a sagittal slice, right
        on an axial one), outlined in black to read on any grey; inside the body where the
        image edge leaves no room."""
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        font = self._title_font
        for name, (row, column) in labels:
            width = font.getlength(name)
            x = column * self.factor - width - 6
            y = row * self.factor - 8
            if x < 2:
                x = column * self.factor + 4
            draw.text((x, y), name, fill=(255, 255, 255), font=font, stroke_width=2,
                      stroke_fill=(0, 0, 0))
        return np.asarray(canvas)


def body_labels(bodies: np.ndarray, names: Sequence[str]) -> list[list[BodyLabel]]:
    """Per slice, the names of the bodies (numbered 1... like `names`) with enough section on
    it, and where they sit: the section's mean row and its first column."""
    per_slice: list[list[BodyLabel]] = [[] for _ in range(bodies.shape[0])]
    for number, found in enumerate(label_boxes(bodies), start=1):
        if found is None or number > len(names):
            continue
        region = bodies[found] == number
        areas = region.sum(axis=(1, 2))
        for offset, area in enumerate(areas):
            if area < LABEL_MIN_SECTION * areas.max():
                continue
            rows, columns = np.nonzero(region[offset])
            per_slice[found[0].start + offset].append(
                (names[number - 1], (float(rows.mean()) + found[1].start,
                                     float(columns.min()) + found[2].start)))
    return per_slice


def _direction_letters(vector: np.ndarray) -> str:
    letters = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z (LPS)
    axis = int(np.argmax(np.abs(vector)))  # the dominant direction (highdicom takes one letter)
    return letters[axis][0 if vector[axis] > 0 else 1]


def patient_orientation(orientation: tuple[float, ...]) -> tuple[str, str]:
    """Patient Orientation letters of the rows and columns, so viewers label the SC's sides."""
    vector = np.asarray(orientation, dtype=float)
    return _direction_letters(vector[:3]), _direction_letters(vector[3:])


def build_overlay_series(
    sources: SourceSeries,
    frames: Iterable[np.ndarray],
    *,
    series_uid: str,
    sop_uids: list[str],
    series_number: int,
    series_description: str,
) -> Iterator[Dataset]:
    """One RGB Secondary Capture per frame, built as the caller consumes them.

    highdicom builds and checks the first; the others are its siblings with their own pixels."""
    template: Dataset | None = None
    for index, (frame, sop_uid) in enumerate(zip(frames, sop_uids, strict=True)):
        if template is not None:
            pixels = np.ascontiguousarray(frame).tobytes()
            yield sibling_instance(template, sop_uid, InstanceNumber=index + 1,
                                   PixelData=pixels + b"\0" * (len(pixels) % 2))
            continue
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=sources.reference,
            pixel_array=frame,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=index + 1,
            manufacturer=MANUFACTURER,
            patient_orientation=patient_orientation(sources.planes[0].orientation),
        )
        sc.BurnedInAnnotation = "YES"
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.ConversionType = "WSD"
        stamp(sc, sources, series_description)
        template = sc
        yield sc
