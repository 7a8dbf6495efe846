"""Phantom analysis as the pipeline does it, shared by the localiser's tests."""

from __future__ import annotations

from marrownode.config import Settings
from marrownode.pipeline import quant_parameters
from marrownode.quant.analysis import QuantResult, analyse_set
from marrownode.quant.geometry import VolumeGeometry
from marrownode.synthetic.anatomy import AnatomicalPhantom
from marrownode.synthetic.geometry import geometry_for


def analyse_phantom(phantom: AnatomicalPhantom, snr: float, seed: int,
                    orientation: str = "sagittal") -> tuple[QuantResult, VolumeGeometry]:
    """The phantom's echoes at this SNR (1.5 T, its water and fat images too), analysed on
    the plane's usual geometry with the default settings."""
    echoes = phantom.echoes(snr=snr, seed=seed)
    spacing = (phantom.slice_thickness_mm, *phantom.pixel_spacing_mm)
    g = geometry_for(orientation)
    geometry = VolumeGeometry(tuple(g.origin), tuple(g.normal), tuple(g.col_dir),
                              tuple(g.row_dir), spacing)
    result = analyse_set(echoes["in_phase"], echoes["opposed_phase"], spacing, 1.5,
                         echoes["water"], echoes["fat"], quant_parameters(Settings()),
                         geometry=geometry)
    return result, geometry
