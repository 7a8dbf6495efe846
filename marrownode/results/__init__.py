"""Every DICOM object the node builds (the only room that does). Importing it first makes
highdicom keep its answers to "does this IOD hold this attribute?" (highdicom_adapter)."""

from marrownode.results import highdicom_adapter as _highdicom_adapter  # noqa: F401
