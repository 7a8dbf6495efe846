"""Every DICOM object the node builds (the only room that does). Importing it installs
highdicom_adapter: highdicom keeps its answers to "does this IOD hold this attribute?" and
takes an SR's content tree built for that report as it is, without a deep copy."""

from marrownode.results import highdicom_adapter as _highdicom_adapter  # noqa: F401
