"""marrownode: a DICOM node for MRI bone-marrow chemical-shift (Dixon) analysis."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("marrownode")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

#: Bumped whenever results change for the same input; part of every derived output UID.
ALGORITHM_VERSION = "1"
