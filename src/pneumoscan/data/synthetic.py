"""Synthetic chest radiographs: a dataset anyone can train on in minutes, with no download.

Each image has a body outline, two lung fields, ribs, clavicles, spine and heart shadow, soft
noise and exposure variation. PNEUMONIA images add patchy or lobar opacities inside the lung
fields; `difficulty` (0 easy .. 1 hard) makes them fainter and smaller. Every image's mean
intensity is reset to a random exposure level drawn independently of its class, so a model
cannot score by brightness alone: it has to find the opacity. The generator knows where it put
the opacity and returns it as a mask, for localisation checks of explanations.

The bodies are young children's by default (the training films are paediatric). `age="adult"` draws adult
proportions instead (smaller heart, longer lungs, steeper ribs, denser bones, breast shadows; see _Build), so
a paediatric model's out-of-distribution guard can be tested on adults without any adult film (issue 20).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan import CLASS_NAMES
from pneumoscan.atomic import write_json
from pneumoscan.data.records import Record
from pneumoscan.data.sources import SPLIT_NAMES, DataSource
from pneumoscan.errors import PneumoscanError

_SPLIT_PATIENT_OFFSET = {"train": 0, "val": 100_000, "test": 200_000}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Train gets `n_per_class` images per class; val and test are smaller."""

    n_per_class: int = 500
    size: int = 224
    seed: int = 0
    difficulty: float = 0.5
    val_per_class: int = 8
    test_fraction: float = 0.25
    age: str = "child"  # "adult": adult proportions (_Build), to test that a paediatric model's guard refuses them

    def __post_init__(self) -> None:
        if self.n_per_class < 4:
            raise PneumoscanError(f"n_per_class must be at least 4, got {self.n_per_class}")
        if self.size < 32:
            raise PneumoscanError(f"size must be at least 32 pixels, got {self.size}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise PneumoscanError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.age not in AGES:
            raise PneumoscanError(f"age must be one of {', '.join(AGES)}, got '{self.age}'")

    def images_per_class(self, split: str) -> int:
        return {
            "train": self.n_per_class,
            "val": self.val_per_class,
            "test": max(8, round(self.n_per_class * self.test_fraction)),
        }[split]


@dataclass(frozen=True)
class _ImageKey:
    split: int
    label: int
    patient: int
    image: int
    subtype: str


def _soft_ellipse(
    xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float,
    angle: float = 0.0, edge: float = 0.04,
) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    distance = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return 1.0 / (1.0 + np.exp((distance - 1.0) / edge))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter  # scipy/sklearn imported where used: config and the CLI load without them
    field = gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (field.std() + 1e-8)


@dataclass(frozen=True)
class _Build:
    """The age-dependent proportions of `_anatomy`. The child values are the generator's original constants
    (so a child film renders byte-identically to before); the adult values follow the radiology of the adult
    frontal chest film. Sources: cardiothoracic ratio about 0.50-0.60 in young children against 0.42-0.48 in
    adults, the normal upper limit 0.5 applying from adolescence (Edwards et al. 1988, "The cardiothoracic
    ratio in childhood", AJR 151:1233; Danzer 1919; Felson, "Chest Roentgenology", 1973); a child's thorax is
    short and wide with near-horizontal posterior ribs, which slope downward laterally as the thorax grows
    longer and the diaphragm descends to about the tenth posterior rib (Openshaw et al. 1984, "Changes in rib
    cage geometry during childhood", Thorax 39:624; Swischuk, "Imaging of the Newborn, Infant and Young
    Child", 5th ed.); the adult skeleton is fully mineralized, so ribs, clavicles and spine are denser and
    sharper against the soft tissue than a child's (Kuhn, Slovis & Haller, "Caffey's Pediatric Diagnostic
    Imaging"); and adult soft tissue (breasts, pectoral muscles) overlies the lower lung fields
    (Felson; Fraser & Pare, "Diagnosis of Diseases of the Chest")."""

    lung_cy: tuple[float, float]  # lung-field centre height: lower means a lower diaphragm
    lung_ry: tuple[float, float]  # lung-field half height
    heart_c: tuple[float, float, float, float]  # heart centre x range, y range
    heart_r: tuple[float, float, float, float]  # heart half width range, half height range
    spine: float  # bone densities over the soft tissue
    rib: float
    clavicle: float
    rib_drop: float  # how far a posterior rib falls from the spine to the chest wall
    rib_step: tuple[float, float]
    rib_width: tuple[float, float]
    soft_tissue: float  # breast / pectoral shadows over the lower lung fields (0: none)


_BUILDS = {
    "child": _Build(lung_cy=(-0.14, -0.06), lung_ry=(0.52, 0.62), heart_c=(0.08, 0.16, 0.24, 0.34),
                    heart_r=(0.26, 0.34, 0.20, 0.26), spine=0.14, rib=0.07, clavicle=0.08, rib_drop=0.22,
                    rib_step=(0.11, 0.14), rib_width=(0.014, 0.022), soft_tissue=0.0),
    "adult": _Build(lung_cy=(-0.08, 0.0), lung_ry=(0.66, 0.76), heart_c=(0.05, 0.11, 0.36, 0.44),
                    heart_r=(0.21, 0.26, 0.17, 0.21), spine=0.20, rib=0.13, clavicle=0.14, rib_drop=0.50,
                    rib_step=(0.13, 0.16), rib_width=(0.016, 0.024), soft_tissue=0.10),
}
AGES = tuple(_BUILDS)


def _anatomy(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray,
             age: str = "child") -> tuple[np.ndarray, np.ndarray]:
    """A patient's body: returns (attenuation image, soft lung mask). `age` picks the proportions (_Build);
    the random draws are the same in number and order for every age, and adult-only structures are drawn
    last, so the child stream (and every child film) is unchanged."""
    build = _BUILDS[age]
    size = xx.shape[0]
    image = np.full_like(xx, 0.04)
    torso = np.maximum(
        _soft_ellipse(xx, yy, rng.normal(0, 0.03), 0.25, rng.uniform(0.82, 0.94), 1.2, edge=0.03),
        _soft_ellipse(xx, yy, 0.0, -0.82, rng.uniform(1.05, 1.2), 0.4, edge=0.05),  # shoulders
    )
    image += 0.36 * torso
    lungs = np.zeros_like(xx)
    for side in (-1.0, 1.0):
        lungs = np.maximum(lungs, _soft_ellipse(
            xx, yy,
            side * rng.uniform(0.31, 0.37), rng.uniform(*build.lung_cy),
            rng.uniform(0.24, 0.30) * (0.93 if side > 0 else 1.0), rng.uniform(*build.lung_ry),
            angle=side * rng.uniform(0.02, 0.12), edge=0.05,
        ))
    lungs *= torso
    from scipy.ndimage import gaussian_filter
    vessels = gaussian_filter(rng.standard_normal((size, size)), size / 90)
    image -= lungs * (0.24 + 0.02 * vessels / (vessels.std() + 1e-8))
    heart_x, heart_y = build.heart_c[:2], build.heart_c[2:]
    heart_rx, heart_ry = build.heart_r[:2], build.heart_r[2:]
    image += 0.13 * _soft_ellipse(xx, yy, rng.uniform(*heart_x), rng.uniform(*heart_y),
                                  rng.uniform(*heart_rx), rng.uniform(*heart_ry), angle=-0.3, edge=0.12)
    spine_x = rng.normal(0, 0.02)
    spine = np.exp(-(((xx - spine_x) / 0.06) ** 4)) * (0.85 + 0.15 * np.cos(yy * 38.0)) * torso
    image += build.spine * spine
    rib_width, first_rib, rib_step = (rng.uniform(*build.rib_width), rng.uniform(-0.62, -0.55),
                                      rng.uniform(*build.rib_step))
    lateral = np.abs(xx - spine_x)
    rib_mask = (lateral > 0.07) & (lateral < 0.82)
    # nine posterior ribs, curving down laterally: distance to the nearest one, in one pass
    rib_phase = (yy - first_rib - build.rib_drop * (np.clip(lateral - 0.07, 0.0, None) / 0.75) ** 1.6) / rib_step
    nearest = np.round(rib_phase)
    rib_mask &= (nearest >= 0) & (nearest <= 8)
    image += build.rib * np.exp(-(((rib_phase - nearest) * rib_step / rib_width) ** 2)) * rib_mask * torso
    for side in (-1.0, 1.0):
        slope = rng.uniform(0.1, 0.2)
        clavicle = -0.66 + slope * (np.abs(xx) - 0.1)
        image += build.clavicle * np.exp(-(((yy - clavicle) / 0.025) ** 2)) * ((side * xx > 0.08) & (side * xx < 0.6))
    if build.soft_tissue > 0.0:  # breast or pectoral shadows over the lower lateral lung fields
        level = build.soft_tissue * rng.uniform(0.4, 1.0)
        low = rng.uniform(0.25, 0.45)
        for side in (-1.0, 1.0):
            image += level * _soft_ellipse(xx, yy, side * rng.uniform(0.38, 0.50), low + rng.normal(0, 0.02),
                                           rng.uniform(0.26, 0.34), rng.uniform(0.20, 0.28), edge=0.15) * torso
    return image, lungs


def _opacity(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, lungs: np.ndarray, difficulty: float
) -> np.ndarray:
    """A pneumonic opacity field in [0, 1], confined to the lung fields."""
    size = xx.shape[0]
    side = rng.choice([-1.0, 1.0])
    field = np.zeros_like(xx)
    shrink = 1.1 - 0.4 * difficulty
    if rng.random() < 0.4:  # lobar: one large consolidation in a lower/mid zone
        cx, cy = side * rng.uniform(0.28, 0.42), rng.uniform(0.0, 0.3)
        field = _soft_ellipse(xx, yy, cx, cy, rng.uniform(0.17, 0.26) * shrink,
                              rng.uniform(0.20, 0.32) * shrink, angle=rng.uniform(-0.5, 0.5), edge=0.15)
    else:  # patchy: several ill-defined blobs, sometimes in both lungs
        for _ in range(rng.integers(2, 6)):
            blob_side = side if rng.random() < 0.75 else -side
            cx, cy = blob_side * rng.uniform(0.25, 0.45), rng.uniform(-0.4, 0.35)
            radius = rng.uniform(0.07, 0.15) * shrink
            field += np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))
    mottle = 0.7 + 0.3 * np.tanh(_smooth_noise(rng, size, size / 60))
    field = np.clip(field, 0.0, 1.0) * mottle * lungs
    return field / (field.max() + 1e-8)


def render(key_seed: list[int], size: int, pneumonia: bool, difficulty: float,
           patient_seed: list[int], age: str = "child") -> tuple[np.ndarray, np.ndarray]:
    """One radiograph as (uint8 image, bool opacity mask); both (size, size). `age`: "child" or "adult"."""
    patient_rng = np.random.default_rng(patient_seed)
    rng = np.random.default_rng(key_seed)
    grid = np.linspace(-1.0, 1.0, size)
    xx, yy = np.meshgrid(grid + rng.normal(0, 0.02), grid + rng.normal(0, 0.02))
    image, lungs = _anatomy(patient_rng, xx, yy, age)
    mask = np.zeros((size, size), dtype=bool)
    if pneumonia:
        field = _opacity(rng, xx, yy, lungs, difficulty)
        image += rng.uniform(0.25, 0.40) * (1.5 - difficulty) * field
        mask = field > 0.3
    from scipy.ndimage import gaussian_filter
    image = gaussian_filter(image, size / 224)
    image += 0.03 * _smooth_noise(rng, size, size / 30) + rng.uniform(0.01, 0.03) * rng.standard_normal((size, size))
    image = np.clip(image, 0.0, None) ** rng.uniform(0.75, 1.35)
    image = (image - image.mean()) * rng.uniform(0.8, 1.25) + rng.uniform(0.30, 0.50)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mask


class SyntheticSource(DataSource):
    """The synthetic dataset as a DataSource: images are rendered on demand, deterministically."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        age = "" if spec.age == "child" else f", age={spec.age}"
        self.name = f"synthetic(n_per_class={spec.n_per_class}, seed={spec.seed}, difficulty={spec.difficulty}{age})"
        self._keys: dict[str, _ImageKey] = {}
        self.splits = {split: self._make_split(split_index, split) for split_index, split in enumerate(SPLIT_NAMES)}

    def _make_split(self, split_index: int, split: str) -> list[Record]:
        rng = np.random.default_rng([self.spec.seed, split_index, 7])
        records: list[Record] = []
        patient = _SPLIT_PATIENT_OFFSET[split]
        for label in (0, 1):
            remaining = self.spec.images_per_class(split)
            while remaining > 0:
                patient += 1
                n_images = int(min(remaining, rng.choice([1, 1, 1, 2, 2, 3])))
                subtype = str(rng.choice(["bacteria", "virus"]))
                for image in range(n_images):
                    if label == 0:
                        patient_name = f"IM-{patient:04d}"
                        name = f"{patient_name}-{image + 1:04d}.png"
                    else:
                        patient_name = f"person{patient}"
                        name = f"{patient_name}_{subtype}_{image + 1}.png"
                    source = f"synthetic://{split}/{CLASS_NAMES[label]}/{name}"
                    self._keys[source] = _ImageKey(split_index, label, patient, image, subtype)
                    records.append(Record(source, label, patient_name, "normal" if label == 0 else subtype,
                                          "IM" if label == 0 else "person"))
                remaining -= n_images
        return records

    def render(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """(image, opacity mask) at the spec's size."""
        key = self._keys[record.source]
        patient_seed = [self.spec.seed, key.split, key.label, key.patient]
        return render(patient_seed + [key.image, 1], self.spec.size, key.label == 1,
                      self.spec.difficulty, patient_seed, self.spec.age)

    def read(self, record: Record, size: int) -> np.ndarray:
        image, _ = self.render(record)
        if size != self.spec.size:
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        return image

    def write(self, out: Path) -> int:
        """Write every split as PNG files in the Kaggle layout; returns the image count."""
        out = Path(out)
        if any((out / split).exists() for split in SPLIT_NAMES):
            raise PneumoscanError(f"{out}: already holds a dataset (train/val/test); choose an empty folder")
        count = 0
        for split, records in self.splits.items():
            for class_name in CLASS_NAMES:
                (out / split / class_name).mkdir(parents=True, exist_ok=True)
            for record in records:
                image, _ = self.render(record)
                relative = record.source.removeprefix("synthetic://")
                Image.fromarray(image).save(out / relative)
                count += 1
        write_json(out / "synthetic.json", {"generator": "pneumoscan.data.synthetic", **asdict(self.spec)})
        return count
