"""Measurement requests: regions a radiologist (or an AI platform) drew and sent into the
study — TID 1500 SR with planar ROIs, presentation states with graphic annotations, DICOM SEG —
read into regions in patient coordinates, for quant/ to measure and results/ to answer."""
