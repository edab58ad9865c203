"""OpenKBP phantoms in the ``provided-data`` layout: head-and-neck CT, structures and dose.

Written layout (as the real release, plus ``sites.csv``)::

    train-pats/pt_N/ct.csv                   ,data / index,value   CT as HU+1024, zeros not listed
    train-pats/pt_N/dose.csv                 ,data / index,value   Gy, at every possible-dose voxel
    train-pats/pt_N/possible_dose_mask.csv   ,data / index,
    train-pats/pt_N/<structure>.csv          ,data / index,        only if contoured
    train-pats/pt_N/voxel_dimensions.csv     three lines, mm (numpy savetxt format)
    sites.csv                                case_id,site (case_id = pt_N; not in the real layout)

Indices are into the flattened 128^3 C-order grid (axis 0 anterior->posterior, axis 1
right->left of the patient, axis 2 the slice axis, superior->inferior), as in the real data.
Patients are numbered ``pt_1``.. ``pt_N`` and all written under ``train-pats`` (readers split).

Generative model (fixed parameters, not to be retuned for any architecture):

- Anatomy in mm around the grid centre, moved and scaled per patient (``SHIFT_MM``,
  ``SCALE_SD``): body (head wider than neck) with a fat rim and skull, Brainstem, SpinalCord in
  front of nothing but behind a vertebral column, parotids, Mandible, Larynx with an airway,
  Esophagus with the trachea in front of it. CT values are tissue HU + 1024 plus site offset and
  noise; organs have only a small contrast to soft tissue, the tumour (PTV70 core) +15 HU.
- Targets do not overlap: PTV70 is one or two ellipsoids with a wobbly surface around a random
  primary site; PTV63 a shell of ``PTV63_MARGIN_MM`` around it; PTV56 a wider shell plus
  ipsilateral or bilateral elective nodal volumes, minus the other two.
- Dose = the largest of ``prescription * fall-off(distance)`` over the targets (1 inside; a sum
  of two exponentials, ``TAIL``), plus a low-dose bath, times smooth multiplicative noise
  (``DOSE_NOISE``); zero outside the possible-dose mask (body near the targets); then the plan's
  latent sparing choices lower the dose inside parotids, larynx and esophagus and cap it in
  the SpinalCord and Brainstem (``ORGAN_CAPS_GY``). So dose is a function of the geometry the
  structures expose, plus noise; the CT shows the targets only faintly.
- Contouring (whether a structure's file exists) follows the real frequencies over the 36
  stored patients (``CONTOUR_RATES``), scaled per site; PTV63 and PTV56 presence is per site.
- Sites (``SITE_PROTOCOLS``) differ in voxel spacing, CT offset and noise, dose fall-off and
  target and contouring habits; sites beyond the listed four are drawn from a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctan.data.openkbp import ORGANS, TARGETS
from ctan.data.phantoms._common import case_rng, even_sizes, smooth_noise, write_sites_csv

GRID = (128, 128, 128)
STRUCTURES = ORGANS + TARGETS
CONTOUR_RATES: dict[str, float] = {
    # fraction of the 36 real patients with the structure file
    "Brainstem": 34 / 36,
    "SpinalCord": 35 / 36,
    "RightParotid": 35 / 36,
    "LeftParotid": 35 / 36,
    "Esophagus": 15 / 36,
    "Larynx": 22 / 36,
    "Mandible": 24 / 36,
}
PRESCRIPTIONS_GY = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
PTV63_MARGIN_MM = (7.0, 12.0)
PTV56_MARGIN_MM = (14.0, 20.0)
POSSIBLE_DOSE_MARGIN_MM = 80.0
"""The possible-dose mask is the body within this distance (along axis 2) of the targets."""
SHIFT_MM = 10.0
SCALE_SD = 0.06
DOSE_NOISE = 0.03
TAIL = 0.25
"""Share of the dose fall-off that decays four times slower (scatter and beam entrance)."""
BATH_GY = 6.0
BATH_FALLOFF_MM = 40.0
SPARING = {
    # fraction of dose removed inside an organ (outside the targets), drawn per patient
    "RightParotid": (0.3, 0.6),
    "LeftParotid": (0.3, 0.6),
    "Larynx": (0.1, 0.3),
    "Esophagus": (0.1, 0.3),
}
ORGAN_CAPS_GY = {"SpinalCord": (40.0, 46.0), "Brainstem": (48.0, 54.0)}
SITE_PREFIX = "hn_site"


@dataclass(frozen=True)
class Protocol:
    """One site's imaging and planning habits.

    Attributes:
        spacing: voxel size in mm along axes 0, 1, 2.
        hu_offset: CT calibration offset in HU.
        hu_noise: CT noise standard deviation in HU.
        falloff_mm: dose fall-off length outside the targets (technique: IMRT vs VMAT).
        ptv63_rate: fraction of patients with a PTV63.
        ptv56_rate: fraction of patients with a PTV56.
        bilateral_rate: fraction of PTV56 volumes with nodes on both sides.
        contour_scale: multiplies the optional-organ contouring rates (Esophagus, Larynx,
            Mandible).
    """

    spacing: tuple[float, float, float]
    hu_offset: float
    hu_noise: float
    falloff_mm: float
    ptv63_rate: float
    ptv56_rate: float
    bilateral_rate: float
    contour_scale: float


SITE_PROTOCOLS: tuple[Protocol, ...] = (
    Protocol((4.7, 4.7, 2.5), 0.0, 15.0, 14.0, 0.35, 0.90, 0.6, 1.0),
    Protocol((3.9, 3.9, 2.5), 15.0, 25.0, 11.0, 0.60, 0.80, 0.4, 1.3),
    Protocol((5.1, 5.1, 3.0), -20.0, 20.0, 17.0, 0.15, 0.95, 0.8, 0.6),
    Protocol((4.3, 4.3, 2.0), 8.0, 30.0, 13.0, 0.40, 0.75, 0.5, 0.8),
)
EXTRA_SITE_SEED = 20_000
OPTIONAL_ORGANS = ("Esophagus", "Larynx", "Mandible")

_PLAN, _PATIENT = 0, 1


def site_protocol(site_index: int) -> Protocol:
    """The protocol of site number ``site_index`` (0-based): four fixed, further ones drawn."""
    if site_index < len(SITE_PROTOCOLS):
        return SITE_PROTOCOLS[site_index]
    rng = np.random.default_rng([EXTRA_SITE_SEED, site_index])
    in_plane = float(np.round(rng.uniform(3.9, 5.1), 3))
    return Protocol(
        (in_plane, in_plane, float(rng.choice([2.0, 2.5, 3.0]))),
        float(rng.uniform(-20.0, 20.0)),
        float(rng.uniform(15.0, 30.0)),
        float(rng.uniform(11.0, 17.0)),
        float(rng.uniform(0.15, 0.6)),
        float(rng.uniform(0.75, 0.95)),
        float(rng.uniform(0.4, 0.8)),
        float(rng.uniform(0.6, 1.3)),
    )


def write(root: Path, *, cases: int, sites: int, seed: int) -> None:
    """Write ``cases`` phantom patients from ``sites`` sites into the empty folder ``root``."""
    plan = np.random.default_rng([seed, _PLAN])
    site_of = np.repeat(np.arange(sites), even_sizes(cases, sites))
    site_of = site_of[plan.permutation(cases)]
    names = {}
    for index in range(cases):
        patient = f"pt_{index + 1}"
        names[patient] = f"{SITE_PREFIX}_{site_of[index] + 1}"
        folder = root / "train-pats" / patient
        folder.mkdir(parents=True)
        write_patient(folder, case_rng(seed, _PATIENT, index), site_protocol(int(site_of[index])))
    write_sites_csv(root, "case_id", names)


def write_patient(folder: Path, rng: np.random.Generator, protocol: Protocol) -> None:
    """Draw one patient and write its CSV files into ``folder``."""
    volumes = simulate_patient(rng, protocol)
    write_sparse(folder / "ct.csv", volumes.ct.ravel(), values=True, decimals=0)
    dose_index = np.flatnonzero(volumes.possible_dose.ravel())
    write_sparse(folder / "dose.csv", volumes.dose.ravel(), index=dose_index, decimals=3)
    write_sparse(folder / "possible_dose_mask.csv", volumes.possible_dose.ravel())
    for name, mask in volumes.structures.items():
        write_sparse(folder / f"{name}.csv", mask.ravel())
    (folder / "voxel_dimensions.csv").write_text(
        "".join(f"{size:.18e}\n" for size in protocol.spacing)
    )


@dataclass(frozen=True)
class PatientVolumes:
    """One phantom patient on the 128^3 grid.

    Attributes:
        ct: ``float32`` HU + 1024, clipped to 0..4095.
        dose: ``float32`` Gy, zero outside ``possible_dose``.
        possible_dose: ``bool`` mask where dose is defined.
        structures: contoured structures only, name -> ``bool`` mask.
    """

    ct: np.ndarray
    dose: np.ndarray
    possible_dose: np.ndarray
    structures: dict[str, np.ndarray]


def simulate_patient(rng: np.random.Generator, protocol: Protocol) -> PatientVolumes:
    """Anatomy, targets, CT and dose of one patient (see the module docstring)."""
    scale = float(np.exp(rng.normal(0.0, SCALE_SD)))
    centre = rng.normal(0.0, SHIFT_MM / 2, 3) * np.array([1.0, 1.0, 0.5])
    axes = [
        ((np.arange(n, dtype=np.float32) - n / 2) * s - c) / scale
        for n, s, c in zip(GRID, protocol.spacing, centre, strict=True)
    ]
    a, b, c = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]

    head = 1.0 / (1.0 + np.exp((c + 30.0) / 12.0))  # 1 in the head, 0 in the neck
    body_radius = (65.0 + 30.0 * head, 60.0 + 20.0 * head)
    body_q = np.sqrt(((a - 5.0) / body_radius[0]) ** 2 + (b / body_radius[1]) ** 2)
    body_depth = (1.0 - body_q) * np.minimum(*body_radius)  # mm inside the skin, approx.
    body = body_depth > 0

    organs = {
        "Brainstem": _ellipsoid(a, b, c, (15.0, 0.0, -100.0), (12.0, 12.0, 30.0)),
        "SpinalCord": _cylinder(a, b, c, (25.0, 0.0), 5.5, (-70.0, 200.0)),
        "RightParotid": _ellipsoid(a, b, c, (12.0, -60.0, -45.0), (18.0, 12.0, 22.0)),
        "LeftParotid": _ellipsoid(a, b, c, (12.0, 60.0, -45.0), (18.0, 12.0, 22.0)),
        "Larynx": _ellipsoid(a, b, c, (-32.0, 0.0, 25.0), (12.0, 14.0, 22.0)),
        "Esophagus": _cylinder(a, b, c, (-10.0, 3.0), 7.0, (45.0, 200.0)),
    }
    ring = np.sqrt(((a + 5.0) / 55.0) ** 2 + (b / 48.0) ** 2)
    organs["Mandible"] = np.where(
        (a < 5.0) & (c > -55.0) & (c < -15.0), (np.abs(ring - 1.0) - 0.06) * 50.0, 50.0
    )
    vertebra = _cylinder(a, b, c, (8.0, 0.0), 12.0, (-60.0, 200.0))
    airway = np.minimum(
        _ellipsoid(a, b, c, (-32.0, 0.0, 25.0), (5.0, 6.0, 20.0)),
        _cylinder(a, b, c, (-28.0, 0.0), 8.0, (40.0, 200.0)),
    )

    target_g, targets = _targets(rng, a, b, c, protocol)
    masks = {name: (g <= 0) & body for name, g in organs.items()}
    targets = {name: mask & body for name, mask in targets.items()}

    cranium = body & (body_depth > 4.0) & (body_depth < 11.0) & (c < -75.0)
    ct = _ct(rng, protocol, body, body_depth, cranium, masks, vertebra, airway, targets, target_g)
    dose, possible = _dose(rng, protocol, target_g, targets, organs, body)

    structures: dict[str, np.ndarray] = {}
    for name in STRUCTURES:
        if name in PRESCRIPTIONS_GY:
            present = name in targets and targets[name].any()
        else:
            rate = CONTOUR_RATES[name]
            if name in OPTIONAL_ORGANS:
                rate = min(1.0, rate * protocol.contour_scale)
            present = rng.random() < rate and masks[name].any()
        if present:
            structures[name] = targets.get(name, masks.get(name))
    return PatientVolumes(ct, dose, possible, structures)


def _ellipsoid(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    centre: tuple[float, float, float] | np.ndarray,
    radii: tuple[float, float, float] | np.ndarray,
) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid: negative inside."""
    q = np.sqrt(
        ((a - centre[0]) / radii[0]) ** 2
        + ((b - centre[1]) / radii[1]) ** 2
        + ((c - centre[2]) / radii[2]) ** 2
    )
    return (q - 1.0) * np.float32(np.mean(radii))


def _cylinder(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    extent: tuple[float, float],
) -> np.ndarray:
    """Signed distance (mm) to a cylinder along axis 2 between ``extent`` (mm)."""
    radial = np.sqrt((a - centre[0]) ** 2 + (b - centre[1]) ** 2) - radius
    along = np.maximum(extent[0] - c, c - extent[1])
    return np.maximum(radial, along)


def _targets(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, c: np.ndarray, protocol: Protocol
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Signed distances (mm) and non-overlapping masks of PTV70, PTV63 and PTV56."""
    primary = np.array([rng.uniform(-35.0, 5.0), rng.uniform(-30.0, 30.0), rng.uniform(-40, 40)])
    g70 = None
    for _ in range(int(rng.integers(1, 3))):
        offset = rng.normal(0.0, 8.0, 3) if g70 is not None else np.zeros(3)
        radii = np.exp(rng.normal(np.log([20.0, 20.0, 26.0]), 0.2))
        blob = _ellipsoid(a, b, c, primary + offset, radii)
        g70 = blob if g70 is None else np.minimum(g70, blob)
    g70 = g70 + 3.0 * smooth_noise(rng, GRID, waves=6, max_cycles=4.0)
    distances = {"PTV70": g70}
    masks = {"PTV70": g70 <= 0}
    if rng.random() < protocol.ptv63_rate:
        distances["PTV63"] = g70 - rng.uniform(*PTV63_MARGIN_MM)
        masks["PTV63"] = (distances["PTV63"] <= 0) & ~masks["PTV70"]
    if rng.random() < protocol.ptv56_rate:
        side = np.sign(primary[1]) or 1.0
        sides = [side, -side] if rng.random() < protocol.bilateral_rate else [side]
        g56 = g70 - rng.uniform(*PTV56_MARGIN_MM)
        for s in sides:
            node = _ellipsoid(a, b, c, (-5.0, 40.0 * s, 20.0), (15.0, 12.0, 45.0))
            g56 = np.minimum(g56, node)
        distances["PTV56"] = g56
        taken = masks["PTV70"] | masks.get("PTV63", False)
        masks["PTV56"] = (g56 <= 0) & ~taken
    return distances, masks


def _ct(
    rng: np.random.Generator,
    protocol: Protocol,
    body: np.ndarray,
    body_depth: np.ndarray,
    cranium: np.ndarray,
    organs: dict[str, np.ndarray],
    vertebra: np.ndarray,
    airway: np.ndarray,
    targets: dict[str, np.ndarray],
    target_g: dict[str, np.ndarray],
) -> np.ndarray:
    """CT in HU + 1024: tissues, bone, air, a faint tumour, site offset and noise."""
    hu = np.full(GRID, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[body & (body_depth < 8.0)] = -90.0  # subcutaneous fat
    hu[cranium] = 900.0
    hu[organs["RightParotid"] | organs["LeftParotid"]] = 10.0
    hu[organs["SpinalCord"] | organs["Brainstem"]] = 32.0
    hu[(vertebra <= 0) & body] = 700.0
    hu[organs["SpinalCord"]] = 32.0
    hu[organs["Mandible"]] = 1100.0
    hu[(airway <= 0) & body] = -950.0
    hu[targets["PTV70"] & (target_g["PTV70"] < -3.0)] += 15.0
    hu[body] += protocol.hu_offset
    hu += rng.normal(0.0, protocol.hu_noise, GRID).astype(np.float32)
    return np.where(body, np.clip(np.round(hu + 1024.0), 0.0, 4095.0), 0.0).astype(np.float32)


def _dose(
    rng: np.random.Generator,
    protocol: Protocol,
    target_g: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    organs: dict[str, np.ndarray],
    body: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Dose (Gy) from distances to the targets and the plan's organ sparing; possible-dose mask."""
    falloff = protocol.falloff_mm * float(np.exp(rng.normal(0.0, 0.1)))
    dose = np.zeros(GRID, dtype=np.float32)
    for name, g in target_g.items():
        outside = np.maximum(g, 0.0)
        shape = (1.0 - TAIL) * np.exp(-outside / falloff) + TAIL * np.exp(-outside / (4 * falloff))
        dose = np.maximum(dose, PRESCRIPTIONS_GY[name] * shape)
    nearest = np.minimum.reduce([np.maximum(g, 0.0) for g in target_g.values()])
    dose = dose + BATH_GY * np.exp(-nearest / BATH_FALLOFF_MM) * (1.0 - dose / 70.0).clip(0.0)
    dose *= np.exp(DOSE_NOISE * smooth_noise(rng, GRID, waves=6, max_cycles=3.0))

    in_target = np.logical_or.reduce(list(targets.values()))
    for name, (low, high) in SPARING.items():
        weight = 1.0 / (1.0 + np.exp(organs[name] / 4.0)) * ~in_target
        dose *= 1.0 - rng.uniform(low, high) * weight
    for name, (low, high) in ORGAN_CAPS_GY.items():
        weight = 1.0 / (1.0 + np.exp(organs[name] / 3.0))
        capped = np.minimum(dose, rng.uniform(low, high))
        dose = dose - weight * (dose - capped)

    ends = np.flatnonzero(np.logical_or.reduce(list(targets.values())).any(axis=(0, 1)))
    margin = round(POSSIBLE_DOSE_MARGIN_MM / protocol.spacing[2])
    slices = np.zeros(GRID[2], dtype=bool)
    slices[max(ends[0] - margin, 0) : ends[-1] + margin + 1] = True
    possible = body & slices[None, None, :]
    return np.where(possible, np.round(dose, 3), 0.0).astype(np.float32), possible


def write_sparse(
    path: Path,
    flat: np.ndarray,
    *,
    index: np.ndarray | None = None,
    values: bool = False,
    decimals: int = 3,
) -> None:
    """Write OpenKBP's sparse CSV: ``,data`` then ``index,value`` (or ``index,`` for masks).

    Args:
        path: file to write.
        flat: the flattened volume (C order).
        index: flat indices to list; default: the nonzero voxels of ``flat``.
        values: write ``flat``'s values (as floats rounded to ``decimals``) instead of a mask.
        decimals: rounding of the values.
    """
    if index is None:
        index = np.flatnonzero(flat)
    text = np.strings.add(index.astype(str), ",")
    if values or flat.dtype != bool:
        numbers = np.round(flat[index].astype(np.float64), decimals)
        text = np.strings.add(text, numbers.astype(str))
    body = "\n".join(text.tolist())
    path.write_text(",data\n" + body + ("\n" if body else ""))
