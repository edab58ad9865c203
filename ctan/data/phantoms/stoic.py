"""STOIC2021 phantoms: chest CT volumes with COVID-19 and severity labels.

Written layout (as the real release, plus ``sites.csv``)::

    data/mha/<PatientID>.mha      int16 HU, zlib-compressed MetaImage, with PatientAge ("065Y")
                                  and PatientSex ("M"/"F") in the header
    metadata/reference.csv        PatientID,probCOVID,probSevere (0/1; severe only if COVID)
    sites.csv                     case_id,site (case_id = PatientID; not in the real layout)

Volumes are ``SHAPE`` = 64^3 voxels (the real ones are about 512x512x300) covering a whole chest
at realistic coarse spacing (``SITE_PROTOCOLS``: 4.5 to 6 mm), axes (z, y, x) in the array:
z superior->inferior, y anterior->posterior, x right->left of the patient.

Generative model (fixed parameters, not to be retuned for any architecture):

- Anatomy in mm: body ellipse with a fat rim, two lungs (-850 HU), mediastinum and heart, spine.
- COVID-positive patients (``COVID_RATE`` = 0.60 overall, per-site rates in the protocols) have
  a latent extent ``e ~ N(0, 1)``: 2 + Poisson(``3 exp(e / 2)``) ground-glass patches (-550 HU,
  consolidating at the core when extensive) placed subpleurally, mostly posterior and inferior,
  in both lungs for ``BILATERAL_RATE`` of patients; patch size grows with ``e``.
- Severity among positives: severe when ``e + 0.025 (age - 60) + N(0, 0.5) > 0.95``, about 24%
  (``SEVERE_THRESHOLD``), so extent predicts it but does not decide it.
- Decoys (``DECOY_RATE``: 45% of negatives, 15% of positives): a lobar consolidation in one lung,
  central perihilar ground glass, or solid nodules, so "any opacity" is not a shortcut; what
  separates COVID is the geometry (peripheral, bilateral, multifocal ground glass).
- Sites differ in spacing, HU offset, noise and smoothing kernel, and in COVID prevalence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctan.data.phantoms._common import case_rng, even_sizes, write_csv, write_sites_csv

SHAPE = (64, 64, 64)
COVID_RATE = 0.60
SEVERE_THRESHOLD = 0.95
BILATERAL_RATE = 0.85
DECOY_RATE = {False: 0.45, True: 0.15}
DECOY_KINDS = ("lobar", "perihilar", "nodules")
GGO_HU = -550.0
LUNG_HU = -850.0
SITE_PREFIX = "chest_site"


@dataclass(frozen=True)
class Protocol:
    """One site's scanner and population.

    Attributes:
        spacing: voxel size in mm along x, y, z (MetaImage / SimpleITK order).
        hu_offset: calibration offset in HU.
        hu_noise: noise standard deviation in HU.
        smoothing: passes of a [1, 2, 1] / 4 kernel along each axis (reconstruction kernel).
        covid_rate: fraction of COVID-positive patients.
    """

    spacing: tuple[float, float, float]
    hu_offset: float
    hu_noise: float
    smoothing: int
    covid_rate: float


SITE_PROTOCOLS: tuple[Protocol, ...] = (
    Protocol((5.5, 5.5, 5.0), 0.0, 25.0, 1, 0.60),
    Protocol((5.0, 5.0, 5.5), 12.0, 35.0, 0, 0.72),
    Protocol((6.0, 6.0, 4.5), -10.0, 20.0, 2, 0.48),
    Protocol((5.2, 5.2, 6.0), 5.0, 30.0, 1, 0.60),
)
EXTRA_SITE_SEED = 30_000

_PLAN, _PATIENT = 0, 1


def site_protocol(site_index: int) -> Protocol:
    """The protocol of site number ``site_index`` (0-based): four fixed, further ones drawn."""
    if site_index < len(SITE_PROTOCOLS):
        return SITE_PROTOCOLS[site_index]
    rng = np.random.default_rng([EXTRA_SITE_SEED, site_index])
    in_plane = float(np.round(rng.uniform(5.0, 6.0), 2))
    return Protocol(
        (in_plane, in_plane, float(np.round(rng.uniform(4.5, 6.0), 2))),
        float(rng.uniform(-10.0, 12.0)),
        float(rng.uniform(20.0, 35.0)),
        int(rng.integers(0, 3)),
        float(rng.uniform(0.48, 0.72)),
    )


@dataclass(frozen=True)
class ChestPatient:
    """One phantom patient.

    Attributes:
        hu: ``int16`` volume ``(z, y, x)`` in HU.
        covid: COVID-19 positive.
        severe: severe outcome (only if positive).
        extent: latent opacity extent (``nan`` for negatives).
        decoy: kind of non-COVID opacity, or ``None``.
        age: years.
        sex: ``"M"`` or ``"F"``.
    """

    hu: np.ndarray
    covid: bool
    severe: bool
    extent: float
    decoy: str | None
    age: int
    sex: str


def write(root: Path, *, cases: int, sites: int, seed: int) -> None:
    """Write ``cases`` phantom patients from ``sites`` sites into the empty folder ``root``."""
    plan = np.random.default_rng([seed, _PLAN])
    site_of = np.repeat(np.arange(sites), even_sizes(cases, sites))[plan.permutation(cases)]
    ids = np.sort(plan.choice(np.arange(1, 10 * cases + 10), cases, replace=False))
    (root / "data" / "mha").mkdir(parents=True)
    reference, names = [], {}
    for index, patient_id in enumerate(ids):
        protocol = site_protocol(int(site_of[index]))
        patient = simulate_patient(case_rng(seed, _PATIENT, index), protocol)
        image = sitk.GetImageFromArray(patient.hu)
        image.SetSpacing(protocol.spacing)
        image.SetOrigin(
            tuple(-0.5 * n * s for n, s in zip(SHAPE[::-1], protocol.spacing, strict=True))
        )
        image.SetMetaData("PatientAge", f"{patient.age:03d}Y")
        image.SetMetaData("PatientSex", patient.sex)
        sitk.WriteImage(image, str(root / "data" / "mha" / f"{patient_id}.mha"), True)
        reference.append([int(patient_id), int(patient.covid), int(patient.severe)])
        names[str(patient_id)] = f"{SITE_PREFIX}_{site_of[index] + 1}"
    write_csv(
        root / "metadata" / "reference.csv", ["PatientID", "probCOVID", "probSevere"], reference
    )
    write_sites_csv(root, "case_id", names)


def simulate_patient(rng: np.random.Generator, protocol: Protocol) -> ChestPatient:
    """Anatomy, opacities, labels and acquisition of one patient (see the module docstring)."""
    covid = bool(rng.random() < protocol.covid_rate)
    age = int(np.clip(rng.normal(64.0 if covid else 58.0, 14.0), 20, 95))
    sex = "M" if rng.random() < (0.62 if covid else 0.5) else "F"
    scale = float(np.exp(rng.normal(0.0, 0.05)))
    sx, sy, sz = protocol.spacing
    z, y, x = (
        ((np.arange(n, dtype=np.float32) - n / 2) * s / scale).reshape(shape)
        for n, s, shape in zip(
            SHAPE, (sz, sy, sx), ((-1, 1, 1), (1, -1, 1), (1, 1, -1)), strict=True
        )
    )
    body_q = np.broadcast_to(np.sqrt((x / 160.0) ** 2 + (y / 115.0) ** 2), SHAPE)
    body = body_q < 1.0
    lungs = [_ellipsoid(x, y, z, (side * 75.0, 0.0, 10.0), (55.0, 80.0, 125.0)) for side in (-1, 1)]
    lung = (lungs[0] < 1.0) | (lungs[1] < 1.0)
    heart = _ellipsoid(x, y, z, (15.0, -25.0, 50.0), (55.0, 45.0, 60.0)) < 1.0
    spine = (np.sqrt(x**2 + (y - 85.0) ** 2) < 16.0) & body

    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    hu[body & (body_q > 0.92)] = -100.0
    hu[lung & ~heart] = LUNG_HU
    hu[spine] = 450.0

    extent, severe = float("nan"), False
    if covid:
        extent = float(rng.standard_normal())
        severe = extent + 0.025 * (age - 60) + rng.normal(0.0, 0.5) > SEVERE_THRESHOLD
        sides = [-1, 1] if rng.random() < BILATERAL_RATE else [int(rng.choice([-1, 1]))]
        for k in range(2 + int(rng.poisson(3.0 * np.exp(extent / 2.0)))):
            side = sides[k % len(sides)]
            centre = _lung_point(rng, side, radius=(0.75, 0.95), posterior=True)
            size = float(np.clip(rng.normal(14.0 + 6.0 * extent, 4.0), 7.0, 40.0))
            core = -150.0 if extent > 1.0 and rng.random() < 0.5 else GGO_HU
            _add_patch(hu, x, y, z, centre, (size, size * 0.8, size * 1.2), core)
    decoy = None
    if rng.random() < DECOY_RATE[covid]:
        decoy = str(rng.choice(DECOY_KINDS))
        side = int(rng.choice([-1, 1]))
        if decoy == "lobar":
            centre = _lung_point(rng, side, radius=(0.2, 0.5), posterior=False)
            radii = tuple(rng.uniform(28.0, 42.0, 3))
            _add_patch(hu, x, y, z, centre, radii, 10.0, edge=0.5)
        elif decoy == "perihilar":
            for s in (-1, 1):
                for _ in range(int(rng.integers(1, 3))):
                    centre = (
                        s * rng.uniform(30.0, 45.0),
                        rng.uniform(-20, 20),
                        rng.uniform(-20, 30),
                    )
                    radii = tuple(rng.uniform(18.0, 30.0, 3))
                    _add_patch(hu, x, y, z, centre, radii, GGO_HU)
        else:
            for _ in range(int(rng.integers(1, 5))):
                centre = _lung_point(rng, int(rng.choice([-1, 1])), (0.0, 0.8), posterior=False)
                r = float(rng.uniform(5.0, 9.0))
                _add_patch(hu, x, y, z, centre, (r, r, r), 30.0, edge=0.1)
    for _ in range(protocol.smoothing):
        for axis in range(3):
            hu = 0.25 * np.roll(hu, 1, axis) + 0.5 * hu + 0.25 * np.roll(hu, -1, axis)
    hu = hu + np.where(body, protocol.hu_offset, 0.0) + rng.normal(0, protocol.hu_noise, SHAPE)
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return ChestPatient(hu, covid, bool(severe), extent, decoy, age, sex)


def _ellipsoid(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:
    """Normalised ellipsoid radius: below 1 inside."""
    return np.sqrt(
        ((x - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((z - centre[2]) / radii[2]) ** 2
    )


def _lung_point(
    rng: np.random.Generator, side: int, radius: tuple[float, float], posterior: bool
) -> tuple[float, float, float]:
    """A point of one lung at a normalised radius in ``radius`` (1 = pleura)."""
    direction = rng.standard_normal(3)
    direction[0] = abs(direction[0]) * (0.5 if not posterior else 1.5)  # lateral half
    if posterior:
        direction[1] = abs(direction[1]) * 0.8 + 0.2
        direction[2] = abs(direction[2]) * 0.5
    direction /= np.linalg.norm(direction)
    r = rng.uniform(*radius)
    return (
        side * (75.0 + 55.0 * r * direction[0]),
        80.0 * r * direction[1],
        10.0 + 125.0 * r * direction[2],
    )


def _add_patch(
    hu: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    radii: tuple[float, ...],
    target_hu: float,
    edge: float = 0.4,
) -> None:
    """Blend an opacity of density ``target_hu`` into the lung voxels of ``hu`` (in place).

    The weight is 1 inside ``1 - edge`` of the normalised radius and falls to 0 at 1; only
    voxels still at lung or ground-glass density change, so an opacity never leaves the lungs.
    """
    q = _ellipsoid(x, y, z, centre, (radii[0], radii[1], radii[2]))
    blended = LUNG_HU + np.clip((1.0 - q) / edge, 0.0, 1.0) * (target_hu - LUNG_HU)
    update = hu < -500.0
    hu[update] = np.maximum(hu[update], blended[update])
