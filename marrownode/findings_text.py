"""What an analysis found, as text for a terminal: the demo and `marrownode process` print
the same table (sets, threshold, localisation, per-vertebra numbers, foci, result series)."""

from __future__ import annotations

from marrownode.report_shape import OutputEntry, SetShape, StudyShape
from marrownode.states import SetState


def _number(value: float | None, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def _print_vertebrae(dixon_set: SetShape) -> None:
    """The per-level table, then each level's endplate findings."""
    print("    vertebra  median loss %  median SIR  below threshold  T1 vs muscle"
          "  T1 vs disc  pattern")
    for v in dixon_set.get("vertebrae", []):
        name = v["level"] or v["label"]
        print(f"    {name:>8}  {_number(v['signal_loss_percent_median'], 13, 1)}"
              f"  {_number(v['sir_median'], 10, 2)}"
              f"  {_number(100 * (v['fraction_below_threshold'] or 0), 14, 0)} %"
              f"  {_number(v['in_phase_to_muscle_ratio'], 12, 2)}"
              f"  {_number(v['in_phase_to_disc_ratio'], 10, 2)}  {v['pattern']}")
    for v in dixon_set.get("vertebrae", []):
        for band in v.get("endplate_findings", []):
            print(f"    {v['level'] or v['label']} {band['endplate']} endplate: low-loss"
                  f" band {band['thickness_mm']} mm (Modic type 1 pattern), loss"
                  f" {_number(band['signal_loss_percent'], 0, 1).strip()} %")


def print_findings(study: StudyShape) -> None:
    """A study's sets, marrow, vertebrae, foci and result series, then the series not used."""
    print(f"\nStudy {study['study_instance_uid']}")
    for dixon_set in study["dixon_sets"]:
        threshold = dixon_set["signal_loss_threshold_percent"]
        print(f"  Dixon set {dixon_set['key']} ({dixon_set['orientation']}):"
              f" in-phase TE {dixon_set['in_phase']['echo_time_ms']} ms,"
              f" opposed-phase TE {dixon_set['opposed_phase']['echo_time_ms']} ms,"
              f" water/fat {'yes' if dixon_set['water'] else 'no'}")
        print(f"  field strength {dixon_set['field_strength_t']} T,"
              f" signal-loss threshold {threshold} %,"
              f" flags: {', '.join(dixon_set['flags']) or 'none'}")
        if dixon_set["state"] == SetState.FAILED:
            print(f"  FAILED: {dixon_set.get('reason', '')}")
            continue
        marrow = dixon_set.get("marrow")
        if marrow is None or not marrow["localised"]:
            print(f"  marrow NOT localised ({marrow['reason'] if marrow else 'not analysed'}):"
                  " maps only, no marrow findings")
        else:
            print(f"  marrow: {marrow['reason']}; pattern {dixon_set.get('pattern')}")
            _print_vertebrae(dixon_set)
        print("  foci (inside localised marrow; fat fraction: "
              f"{dixon_set.get('fat_fraction_label')}):")
        if not dixon_set["foci"]:
            print("    none")
        else:
            print("    #  vertebra  slices  volume mm3  signal loss %   SIR  fat fraction %"
                  "  margin       category")
        for number, focus in enumerate(dixon_set["foci"], start=1):
            where = focus["level"] or focus["vertebra"] or "-"
            print(f"    {number}  {where:>8}  {focus['slice_count']:>6}"
                  f"  {_number(focus['volume_mm3'], 10, 0)}"
                  f"  {_number(focus['signal_loss_percent'], 13, 1)}"
                  f"  {_number(focus['sir'], 5, 2)}"
                  f"  {_number(focus['fat_fraction_percent'], 14, 1)}"
                  f"  {focus['margin'] or '-':<11}  {focus['category']}")
        series: dict[str, list[OutputEntry]] = {}
        for entry in dixon_set["outputs"]:
            series.setdefault(entry["series_instance_uid"], []).append(entry)
        print("  result series sent back into the study:")
        for entries in sorted(series.values(), key=lambda e: e[0].get("series_number", 0)):
            print(f"    {entries[0].get('series_number', 0):>5}"
                  f"  {entries[0].get('series_description', ''):<55}"
                  f" {len(entries):>3} instance(s)")
    for skipped in study["skipped_series"]:
        print(f"  not used: series {skipped['series_instance_uid']}: {skipped['reason']}")
