"""The science: plain typed Python functions, memoized per input packet by orcapod."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

from orcapod_core import function_pod


@function_pod(output_keys="do_calibrated_mg_l", version="v1")
def calibrate_oxygen(dissolved_oxygen_mg_l: float, do_offset_mg_l: float) -> float:
    """Apply the probe's lab calibration offset to a dissolved-oxygen reading."""
    return round(dissolved_oxygen_mg_l + do_offset_mg_l, 3)


@function_pod(output_keys="do_saturation_pct", version="v1")
def oxygen_saturation(temperature_c: float, do_calibrated_mg_l: float, elevation_m: float) -> float:
    """Percent oxygen saturation: Benson-Krause solubility at temperature, corrected for altitude."""
    t = temperature_c + 273.15
    ln_c = (
        -139.34411
        + 1.575701e5 / t
        - 6.642308e7 / t**2
        + 1.243800e10 / t**3
        - 8.621949e11 / t**4
    )
    pressure_atm = math.exp(-elevation_m / 8434.5)  # barometric formula, scale height ~8.4 km
    saturation = math.exp(ln_c) * pressure_atm
    return round(100.0 * do_calibrated_mg_l / saturation, 2)


@function_pod(output_keys=["wqi", "category"], version="v1")
def water_quality_index(
    ph: float, nitrate_mg_l: float, turbidity_ntu: float, do_saturation_pct: float
) -> tuple[float, str]:
    """A simplified NSF-style index (0-100) from four sub-indices, and its category."""
    q_ph = max(0.0, 100.0 - 40.0 * abs(ph - 7.3))
    q_no3 = max(0.0, 100.0 - 18.0 * nitrate_mg_l)
    q_turb = max(0.0, 100.0 - 6.0 * turbidity_ntu)
    q_do = max(0.0, 100.0 - 1.2 * abs(100.0 - do_saturation_pct))
    wqi = round(0.2 * q_ph + 0.25 * q_no3 + 0.2 * q_turb + 0.35 * q_do, 1)
    category = "excellent" if wqi >= 90 else "good" if wqi >= 70 else "fair" if wqi >= 50 else "poor"
    return wqi, category


@function_pod(output_keys=["n_samples", "mean_wqi", "worst_wqi", "share_good_or_better"], version="v1")
def network_summary(wqi: list[float], category: list[str]) -> tuple[int, float, float, float]:
    """Summarise one batch of scored samples."""
    good = sum(c in ("good", "excellent") for c in category)
    return len(wqi), round(sum(wqi) / len(wqi), 2), min(wqi), round(good / len(wqi), 3)


@function_pod(output_keys="report", version="v1")
def station_report(
    river: str, n_samples: int, mean_wqi: float, worst_wqi: float, share_good_or_better: float
) -> Path:
    """A station's report card, as a markdown file. It is written to a scratch folder; orcapod
    keeps the file in the result store (content-addressed), so the scratch copy may go."""
    slug = re.sub(r"[^a-z0-9]+", "-", river.lower()).strip("-")
    path = Path(tempfile.mkdtemp(prefix="water-quality-")) / f"{slug}-report.md"
    path.write_text(
        f"# {river}\n\n"
        f"| samples | mean WQI | worst WQI | good or better |\n| --- | --- | --- | --- |\n"
        f"| {n_samples} | {mean_wqi} | {worst_wqi} | {share_good_or_better:.0%} |\n"
    )
    return path
