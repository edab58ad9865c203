"""HAM10000 phantoms in the Dataverse layout: dermatoscopic images, lesion masks and metadata.

Written layout (as the real release)::

    HAM10000_metadata.csv    lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
    HAM10000_images_part_1/ISIC_xxxxxxx.jpg  first half of the image ids
    HAM10000_images_part_2/ISIC_xxxxxxx.jpg  second half
    HAM10000_segmentations_lesion_tschandl/ISIC_xxxxxxx_segmentation.png   (0/255, mode L)

Images are ``IMAGE_SIZE`` = 160x120 RGB JPEG (quality 90), smaller than the real 600x450 but with
the same 4:3 aspect. The ``dataset`` column holds the site: the four real sites first
(``SITES``), then ``derm_site_5``, ``derm_site_6``... whose label mix repeats the real sites' in
turn. Cases are split evenly over the sites.

Generative model (fixed parameters, not to be retuned for any architecture):

- Each lesion has six latent traits ``LATENT_TRAITS`` drawn as ``DX_TRAIT_MEANS[dx] +
  TRAIT_SD * N(0, 1)``: size, border irregularity and elongation (the mask shows them),
  pigment, redness and colour variegation (the colours inside the mask show them). The class
  means overlap, so the diagnosis is a noisy function of geometry and colour that a segmentation
  model must find; the image alone, without locating the lesion, carries only part of it.
- Each site changes acquisition (``SITE_ACQUISITION``: RGB cast, brightness offset, blur,
  noise, vignetting) and label mix (``SITE_DX_PROPORTIONS``, computed from the real metadata of
  all 10,015 images: e.g. ``vidir_molemax`` is 94% ``nv`` with no ``akiec``).
- Lesions have 1, 2 or 3 images (``IMAGES_PER_LESION``, from the real 74/19/7% split): the same
  latent lesion seen with another rotation, scale, position, hairs and noise.
- ``MISSING_MASK_RATE`` of images have no mask file; ``MISSING_AGE_RATE`` have an empty age.
- ``dx_type``, age, sex and localization follow the real per-diagnosis frequencies
  (``dx_type`` leaks the label exactly as in the real data: never use it as an input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ctan.data.phantoms._common import case_rng, even_sizes, site_names, smooth_noise, write_csv

IMAGE_SIZE = (160, 120)
"""Width and height of the phantom images (the real ones are 600x450)."""

DIAGNOSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
SITES = ("vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias")
EXTRA_SITE_PREFIX = "derm_site"

SITE_DX_PROPORTIONS: dict[str, tuple[float, ...]] = {
    # fraction of images per diagnosis, in DIAGNOSES order, from HAM10000_metadata_full.csv
    "vidir_molemax": (0.0000, 0.0005, 0.0314, 0.0076, 0.0061, 0.9408, 0.0137),
    "vidir_modern": (0.0095, 0.0627, 0.1412, 0.0152, 0.2022, 0.5448, 0.0244),
    "rosendahl": (0.1306, 0.1310, 0.2169, 0.0133, 0.1514, 0.3555, 0.0013),
    "vienna_dias": (0.0000, 0.0114, 0.0228, 0.0091, 0.1526, 0.7973, 0.0068),
}

LATENT_TRAITS = ("size", "irregularity", "elongation", "pigment", "redness", "variegation")
DX_TRAIT_MEANS: dict[str, tuple[float, ...]] = {
    "akiec": (0.2, 0.8, 0.5, -0.8, 1.0, -0.1),
    "bcc": (-0.1, 0.6, 0.2, -0.6, 0.7, 0.2),
    "bkl": (0.4, 0.3, 0.4, -0.3, -0.2, 0.3),
    "df": (-0.7, -0.8, -0.6, 0.0, 0.4, -0.4),
    "mel": (0.9, 1.0, 0.7, 0.9, 0.0, 1.0),
    "nv": (0.0, -0.7, -0.3, 0.2, -0.3, -0.6),
    "vasc": (-0.8, -0.5, -0.5, -0.2, 1.8, -0.3),
}
TRAIT_SD = 0.55

IMAGES_PER_LESION = (0.74, 0.19, 0.07)
MISSING_MASK_RATE = 0.03
MISSING_AGE_RATE = 0.006
HAIR_RATE = 0.8
"""Mean number of hairs per image (Poisson)."""
SKIN_RGB = (0.90, 0.58, 0.57)


@dataclass(frozen=True)
class Acquisition:
    """How one site's camera renders an image.

    Attributes:
        cast: RGB gain.
        offset: brightness offset on the 0..255 scale.
        blur: Gaussian blur radius in pixels.
        noise: pixel noise standard deviation on the 0..255 scale.
        vignette: darkening at the image corners (fraction).
    """

    cast: tuple[float, float, float]
    offset: float
    blur: float
    noise: float
    vignette: float


SITE_ACQUISITION: dict[str, Acquisition] = {
    "vidir_molemax": Acquisition((1.00, 0.95, 0.92), 0.0, 0.6, 3.0, 0.15),
    "vidir_modern": Acquisition((1.05, 0.97, 0.90), 8.0, 0.3, 2.0, 0.35),
    "rosendahl": Acquisition((0.95, 0.98, 1.06), -6.0, 0.8, 4.0, 0.25),
    "vienna_dias": Acquisition((1.08, 0.92, 0.98), -12.0, 1.2, 6.0, 0.45),
}
EXTRA_SITE_SEED = 10_000
"""Acquisition of sites beyond the real four is drawn from this fixed seed and the site number."""

DX_TYPES: dict[str, dict[str, float]] = {
    "akiec": {"histo": 1.0},
    "bcc": {"histo": 1.0},
    "bkl": {"histo": 766 / 1099, "consensus": 264 / 1099, "confocal": 69 / 1099},
    "df": {"consensus": 60 / 115, "histo": 55 / 115},
    "mel": {"histo": 1.0},
    "nv": {"follow_up": 3704 / 6705, "histo": 2498 / 6705, "consensus": 503 / 6705},
    "vasc": {"consensus": 75 / 142, "histo": 67 / 142},
}
DX_AGE_MEAN_SD: dict[str, tuple[float, float]] = {
    "akiec": (66.5, 11.5),
    "bcc": (66.8, 13.6),
    "bkl": (64.3, 14.1),
    "df": (53.0, 13.5),
    "mel": (60.7, 15.2),
    "nv": (46.5, 15.2),
    "vasc": (51.4, 21.6),
}
DX_MALE_FRACTION = {
    "akiec": 0.676,
    "bcc": 0.617,
    "bkl": 0.57,
    "df": 0.548,
    "mel": 0.619,
    "nv": 0.51,
    "vasc": 0.486,
}
UNKNOWN_SEX_RATE = 0.006
LOCALIZATIONS: dict[str, int] = {
    "back": 2192,
    "lower extremity": 2077,
    "trunk": 1404,
    "upper extremity": 1118,
    "abdomen": 1022,
    "face": 745,
    "chest": 407,
    "foot": 319,
    "unknown": 234,
    "neck": 168,
    "scalp": 128,
    "hand": 90,
    "ear": 56,
    "genital": 48,
    "acral": 7,
}

FIRST_IMAGE_NUMBER = 24306
METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
MASK_FOLDER = "HAM10000_segmentations_lesion_tschandl"

_PLAN, _LESION, _IMAGE = 0, 1, 2


def site_acquisition(site_index: int) -> Acquisition:
    """The acquisition of site number ``site_index`` (0-based): real sites fixed, others drawn."""
    if site_index < len(SITES):
        return SITE_ACQUISITION[SITES[site_index]]
    rng = np.random.default_rng([EXTRA_SITE_SEED, site_index])
    red, green, blue = (float(c) for c in rng.uniform(0.9, 1.1, 3))
    return Acquisition(
        (red, green, blue),
        float(rng.uniform(-12.0, 10.0)),
        float(rng.uniform(0.3, 1.2)),
        float(rng.uniform(2.0, 6.0)),
        float(rng.uniform(0.1, 0.45)),
    )


def site_dx_proportions(site_index: int) -> np.ndarray:
    """Diagnosis mix of site number ``site_index``; sites beyond the real four repeat them."""
    mix = np.asarray(SITE_DX_PROPORTIONS[SITES[site_index % len(SITES)]], dtype=float)
    return mix / mix.sum()


@dataclass(frozen=True)
class _Lesion:
    index: int
    site_index: int
    dx: str
    images: int


def write(root: Path, *, cases: int, sites: int, seed: int) -> None:
    """Write ``cases`` phantom images from ``sites`` sites into the empty folder ``root``."""
    names = site_names(SITES, sites, EXTRA_SITE_PREFIX)
    plan = np.random.default_rng([seed, _PLAN])
    lesions: list[_Lesion] = []
    for site_index, size in enumerate(even_sizes(cases, sites)):
        mix = site_dx_proportions(site_index)
        remaining = size
        while remaining > 0:
            images = min(int(plan.choice(3, p=IMAGES_PER_LESION)) + 1, remaining)
            dx = DIAGNOSES[int(plan.choice(len(DIAGNOSES), p=mix))]
            lesions.append(_Lesion(len(lesions), site_index, dx, images))
            remaining -= images
    image_numbers = FIRST_IMAGE_NUMBER + plan.permutation(cases)
    lesion_numbers = plan.permutation(len(lesions))
    half = (cases + 1) // 2

    for folder in (*IMAGE_FOLDERS[: 1 if cases == 1 else 2], MASK_FOLDER):
        (root / folder).mkdir()
    rows: list[list[str]] = []
    image_index = 0
    for lesion in lesions:
        rng = case_rng(seed, _LESION, lesion.index)
        traits = np.asarray(DX_TRAIT_MEANS[lesion.dx]) + TRAIT_SD * rng.standard_normal(6)
        shape = _lesion_shape(rng, traits)
        skin = np.asarray(SKIN_RGB) * np.exp(rng.normal(0.0, 0.06, 3))
        lesion_row = _metadata(rng, lesion.dx)
        lesion_id = f"HAM_{lesion_numbers[lesion.index]:07d}"
        acquisition = site_acquisition(lesion.site_index)
        for _ in range(lesion.images):
            number = int(image_numbers[image_index])
            image_id = f"ISIC_{number:07d}"
            image_rng = case_rng(seed, _IMAGE, image_index)
            image, mask = _render(image_rng, traits, shape, skin, acquisition)
            folder = IMAGE_FOLDERS[0 if number - FIRST_IMAGE_NUMBER < half else 1]
            image.save(root / folder / f"{image_id}.jpg", quality=90)
            if image_rng.random() >= MISSING_MASK_RATE:
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
                    root / MASK_FOLDER / f"{image_id}_segmentation.png"
                )
            rows.append([lesion_id, image_id, lesion.dx, *lesion_row, names[lesion.site_index]])
            image_index += 1
    rows.sort(key=lambda row: (row[0], row[1]))
    write_csv(root / "HAM10000_metadata.csv", [*METADATA_COLUMNS, "dataset"], rows)


@dataclass(frozen=True)
class _Shape:
    radius: float
    ratio: float
    harmonics: np.ndarray
    phases: np.ndarray
    edge: float


def _lesion_shape(rng: np.random.Generator, traits: np.ndarray) -> _Shape:
    """Border geometry from the size, irregularity and elongation traits."""
    size, irregularity, elongation = traits[:3]
    orders = np.arange(2, 8)
    amplitude = float(np.clip(0.07 * np.exp(0.6 * irregularity), 0.01, 0.3))
    harmonics = amplitude * rng.standard_normal(orders.size) / np.sqrt(orders - 1)
    return _Shape(
        radius=float(np.clip(26.0 * np.exp(0.3 * size), 10.0, 50.0)),
        ratio=float(np.clip(np.exp(0.2 + 0.2 * elongation), 1.0, 2.0)),
        harmonics=harmonics,
        phases=rng.uniform(0.0, 2.0 * np.pi, orders.size),
        edge=float(1.0 + 1.5 * _sigmoid(irregularity)),
    )


def _metadata(rng: np.random.Generator, dx: str) -> list[str]:
    """dx_type, age, sex and localization of one lesion, drawn from the real frequencies."""
    types = DX_TYPES[dx]
    dx_type = str(rng.choice(list(types), p=list(types.values())))
    mean, sd = DX_AGE_MEAN_SD[dx]
    age = float(np.clip(5.0 * np.round(rng.normal(mean, sd) / 5.0), 0.0, 85.0))
    age_text = "" if rng.random() < MISSING_AGE_RATE else f"{age:.1f}"
    if rng.random() < UNKNOWN_SEX_RATE:
        sex = "unknown"
    else:
        sex = "male" if rng.random() < DX_MALE_FRACTION[dx] else "female"
    counts = np.asarray(list(LOCALIZATIONS.values()), dtype=float)
    localization = str(rng.choice(list(LOCALIZATIONS), p=counts / counts.sum()))
    return [dx_type, age_text, sex, localization]


def _render(
    rng: np.random.Generator,
    traits: np.ndarray,
    shape: _Shape,
    skin: np.ndarray,
    acquisition: Acquisition,
) -> tuple[Image.Image, np.ndarray]:
    """One view of a lesion: an RGB image and its boolean mask ``(H, W)``."""
    width, height = IMAGE_SIZE
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width / 2 + rng.normal(0.0, 7.0)
    cy = height / 2 + rng.normal(0.0, 5.0)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    scale = float(np.exp(rng.normal(0.0, 0.07)))
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / np.sqrt(shape.ratio)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * np.sqrt(shape.ratio)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    orders = np.arange(2, 8)[:, None, None]
    wobble = shape.harmonics[:, None, None] * np.cos(orders * phi + shape.phases[:, None, None])
    border = shape.radius * scale * (1.0 + wobble.sum(axis=0))
    mask = rho < border
    alpha = np.clip((border - rho) / shape.edge + 0.5, 0.0, 1.0)[..., None]

    pigment, redness, variegation = (_sigmoid(1.2 * t) for t in traits[3:])
    texture = 1.0 + 0.02 * smooth_noise(rng, (height, width), waves=16, max_cycles=12.0)
    skin_map = skin * texture[..., None]
    lesion = skin * np.exp(-1.3 * pigment * np.array([0.9, 1.5, 1.7]))
    lesion = lesion * (1.0 - redness * np.array([0.05, 0.45, 0.3]))
    mottle = smooth_noise(rng, (height, width), waves=6, max_cycles=6.0)[..., None]
    centre = np.clip(1.0 - rho / np.maximum(border, 1.0), 0.0, 1.0)[..., None]
    lesion_map = lesion * np.exp(
        -0.6 * variegation * mottle * np.array([1.0, 1.2, 1.1]) - 0.4 * pigment * centre
    )
    rgb = skin_map * (1.0 - alpha) + lesion_map * alpha

    corner = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2)) ** 2
    rgb = rgb * np.asarray(acquisition.cast) * (1.0 - acquisition.vignette * corner / 2)[..., None]
    pixels = np.clip(255.0 * rgb + acquisition.offset, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    _draw_hairs(rng, image)
    blur = acquisition.blur * float(np.exp(rng.normal(0.0, 0.2)))
    image = image.filter(ImageFilter.GaussianBlur(blur))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, acquisition.noise, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB"), mask


def _draw_hairs(rng: np.random.Generator, image: Image.Image) -> None:
    """Hairs, as dermoscopy shows them: a few thin dark straight lines across the image."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(int(rng.poisson(HAIR_RATE))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        angle, length = rng.uniform(0, np.pi), rng.uniform(30, 120)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        shade = int(rng.uniform(30, 80))
        draw.line([(x0, y0), (x1, y1)], fill=(shade, shade - 10, shade - 15), width=1)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))
