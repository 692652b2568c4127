"""A deterministic synthetic scene world, written in the real data sets' on-disk formats.

Each scene is a textured background with one large "subject" shape and a few
smaller distractor shapes. The scene class is the subject's colour x fill
pattern (``red_solid``, ``blue_striped``, ...); its outline (circle, square,
triangle, cross) is a nuisance. What makes
it learnable but not trivial: hue, saturation and brightness jitter blur the
colour boundaries (red and yellow overlap, which caps top-1 a little below
100 %), smaller washed-out distractors carry other patterns and can occlude the
subject, the subject varies in size, position, outline and rotation, and
backgrounds are textured and noisy.

Why patterns and not outlines as the class: a small ViT trained from scratch for
a few CPU-minutes learns colour and texture, but barely starts on outlines (44 %
top-1 on colour x outline after 10 epochs),
and the suite needs a teacher worth compressing. Likewise "halved" replaced a
fine checkerboard, which the same model confused with stripes two times in three.

Everything is a pure function of ``(seed, split, index)``, so a data set can be
regenerated bit for bit, and the loaders read it exactly as they would read
ImageNet (``write_classification``), ADE20K (``write_segmentation``) or COCO
(``write_detection``). The dense sets draw the same world at the dense task's size
(``dense_world``) and label the subject's pixels and box by its class.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.io import atomic_write_text

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PATTERNS: tuple[str, ...] = ("solid", "striped", "halved", "hollow")
# Hues in degrees; neighbours are 90 degrees apart before jitter.
COLOURS: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 130.0, "blue": 225.0}
MARKER_FILE = "pela_synthetic.json"
# Part of every synthetic data stage's spec (and of the marker): bump it when a writer's output changes, so
# a reused `--out` regenerates the scenes instead of reusing what an older writer drew.
GENERATOR_VERSION = 1
# The dense writers' labels (`write_segmentation`, `write_detection`), on top of the scenes' version:
# 2 labels the subject by its class; 1 (no such key in older specs) labelled every object by its outline.
DENSE_LABEL_VERSION = 2


def class_names(world: WorldConfig | None = None) -> list[str]:
    world = world or WorldConfig()
    return [f"{c}_{p}" for c in world.colours for p in world.patterns]


@dataclass(frozen=True)
class WorldConfig:
    """The knobs of the world; saved in the marker file next to the data."""

    img_size: int = 64
    subject_size: tuple[float, float] = (0.28, 0.48)  # fraction of the image side
    distractor_size: tuple[float, float] = (0.10, 0.18)
    distractors: tuple[int, int] = (0, 2)
    distractor_saturation: tuple[float, float] = (0.15, 0.4)
    hue_jitter: float = 35.0  # degrees either way: red and yellow overlap by 10 degrees
    noise_std: float = 10.0  # pixel noise, 0-255 scale
    shapes: tuple[str, ...] = SHAPES
    patterns: tuple[str, ...] = PATTERNS
    colours: tuple[str, ...] = tuple(COLOURS)

    @classmethod
    def from_dict(cls, values: dict) -> "WorldConfig":
        """The inverse of `asdict`, also after a JSON round trip (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class SceneObject:
    shape: str
    colour: str
    pattern: str
    centre: tuple[float, float]
    radius: float
    polygon: list[tuple[float, float]] = field(default_factory=list)
    z: int = 0  # paint order: higher is painted later, on top

    @property
    def label(self) -> str:
        return f"{self.colour}_{self.pattern}"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        xs = [p[0] for p in self.polygon]
        ys = [p[1] for p in self.polygon]
        return min(xs), min(ys), max(xs), max(ys)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _rgb(hue_deg: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "circle":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    elif shape == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif shape == "triangle":
        pts = [(math.cos(t), math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "cross":
        a, b = 0.33, 1.0
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation texture: stripes, checks, smooth gradient or blotchy noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(4)
    if kind == 0:
        theta = rng.uniform(0, math.pi)
        pattern = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * rng.uniform(6, 20))
    elif kind == 1:
        k = rng.uniform(4, 10)
        pattern = np.sign(np.sin(xx * k * math.pi) * np.sin(yy * k * math.pi))
    elif kind == 2:
        pattern = xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)
    else:
        coarse = rng.normal(size=(8, 8)).astype(np.float32)
        pattern = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1), np.float32))[:size, :size]
    pattern = (pattern - pattern.min()) / (np.ptp(pattern) + 1e-6)
    c1 = np.array(_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.85)), np.float32)
    c2 = np.array(_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.85)), np.float32)
    return c1 * pattern[..., None] + c2 * (1 - pattern[..., None])


def _place(rng: np.random.Generator, world: WorldConfig, size_range: tuple[float, float]) -> tuple[float, float, float]:
    s = world.img_size
    r = rng.uniform(*size_range) * s / 2
    cx = rng.uniform(r, s - r)
    cy = rng.uniform(r, s - r)
    return cx, cy, r


def _fill(draw: ImageDraw.ImageDraw, canvas: Image.Image, poly: list[tuple[float, float]], pattern: str,
          colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    if pattern == "solid":
        draw.polygon(poly, fill=colour)
        return
    if pattern == "hollow":
        width = max(2, round(0.1 * max(canvas.size) / 4))
        draw.polygon(poly, outline=colour, width=width)
        return
    # Striped / halved: paint the pattern through the polygon's mask.
    size = canvas.size[0]
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, 6.0)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    if pattern == "striped":
        on = np.sin(2 * math.pi * u / period) > 0
    elif pattern == "halved":  # bright on one side of a line through the centroid, dark on the other
        cx = sum(p[0] for p in poly) / len(poly)
        cy = sum(p[1] for p in poly) / len(poly)
        on = u > cx * math.cos(theta) + cy * math.sin(theta)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    dark = tuple(int(c * 0.25) for c in colour)
    tile = np.where(on[..., None], np.array(colour, np.uint8), np.array(dark, np.uint8)).astype(np.uint8)
    canvas.paste(Image.fromarray(tile), (0, 0), mask)


def render_scene(seed: int, split: str, index: int, world: WorldConfig = WorldConfig(),
                 subject_class: int | None = None) -> tuple[Image.Image, list[SceneObject]]:
    """Render scene `index` of `split`; the subject comes first in the object list.

    The list order is not the paint order (distractors go below or above the
    subject); each object's ``z`` is its paint order, for callers that redraw the
    scene, such as the dense label writers.
    """
    rng = _rng(seed, split, index)
    n_patterns, n_colours = len(world.patterns), len(world.colours)
    n_classes = n_patterns * n_colours
    if subject_class is None:
        subject_class = int(rng.integers(n_classes))

    canvas = Image.fromarray(_background(rng, world.img_size).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)

    def paint(cls: int, size_range: tuple[float, float], saturation: tuple[float, float] = (0.55, 1.0)) -> SceneObject:
        colour, pattern = world.colours[cls // n_patterns], world.patterns[cls % n_patterns]
        shape = world.shapes[int(rng.integers(len(world.shapes)))]
        cx, cy, r = _place(rng, world, size_range)
        poly = _polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
        hue = COLOURS[colour] + rng.uniform(-world.hue_jitter, world.hue_jitter)
        rgb = _rgb(hue, rng.uniform(*saturation), rng.uniform(0.6, 1.0))
        _fill(draw, canvas, poly, pattern, rgb, rng)
        return SceneObject(shape, colour, pattern, (cx, cy), r, poly)

    n_distractors = int(rng.integers(world.distractors[0], world.distractors[1] + 1))
    # Distractors go underneath the subject half of the time, on top the other half,
    # so occlusion cuts both ways.
    below = [bool(rng.integers(2)) for _ in range(n_distractors)]
    distractor_classes = [int(c) for c in rng.integers(n_classes, size=n_distractors)]
    def distractor(c: int) -> SceneObject:
        return paint(c, world.distractor_size, world.distractor_saturation)

    objects = [distractor(c) for c, b in zip(distractor_classes, below) if b]
    subject = paint(subject_class, world.subject_size)
    objects += [distractor(c) for c, b in zip(distractor_classes, below) if not b]
    n_below = sum(below)
    for z, obj in enumerate([*objects[:n_below], subject, *objects[n_below:]]):
        obj.z = z

    pixels = np.asarray(canvas, np.float32) + rng.normal(0, world.noise_std, (world.img_size, world.img_size, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    return image, [subject, *objects]


def write_classification(root: str | Path, *, seed: int = 0, n_train: int = 3200, n_val: int = 800,
                         world: WorldConfig = WorldConfig(), progress: bool = True) -> Path:
    """Write an ImageNet-layout split (``root/{train,val}/<class>/<n>.png``) plus a marker file.

    Classes are balanced: scene `i` has class ``i % n_classes``. The marker file is
    written last, so a half-written folder is never taken for a finished one.
    """
    from tqdm import tqdm

    root = Path(root)
    names = class_names(world)
    for split, count in (("train", n_train), ("val", n_val)):
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(count), desc=f"synthetic {split}", disable=not progress, leave=False):
            cls = i % len(names)
            image, _ = render_scene(seed, split, i, world, subject_class=cls)
            image.save(root / split / names[cls] / f"{i:06d}.png")
    marker = {
        "provenance": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "classes": names,
        "world": asdict(world),
    }
    atomic_write_text(root / MARKER_FILE, json.dumps(marker, indent=2))
    return root


# Dense tasks: the classification world's scenes, with the subject's pixels and box labelled by its
# class, in ADE20K and COCO layouts.

SEG_CLASSES: tuple[str, ...] = ("background", *class_names())
DET_CLASSES: tuple[str, ...] = tuple(class_names())


def dense_world(img_size: int = 128) -> WorldConfig:
    """The world for segmentation and detection scenes: the classification world at `img_size`.

    The dense tasks ask where the subject is and what it is: its pixels (or box) carry its
    class, the washed-out distractors are background. So they test what the teacher learned,
    which is what compression can lose. Generator 1 labelled every object by its outline, which
    the teacher was never taught: every backbone, dense or plain SVD, came out within a point
    (deit_micro 24.07 vs 24.03 mIoU), so those rows ranked nothing. Labels by fill pattern alone
    (tried, never released) left the dense model 2-3 points ahead of plain SVD, close to the noise.
    """
    return WorldConfig(img_size=img_size)


DENSE_WORLD = dense_world()


def clip_polygon(poly: list[tuple[float, float]], width: float, height: float) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clip of a polygon to the rectangle [0, width] x [0, height]."""
    out = list(poly)
    for axis, bound, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if not out:
            break
        out = _clip_half_plane(out, axis, float(bound), keep_below)
    return out


def _clip_half_plane(poly: list[tuple[float, float]], axis: int, bound: float,
                     keep_below: bool) -> list[tuple[float, float]]:
    def inside(p: tuple[float, float]) -> bool:
        return p[axis] <= bound if keep_below else p[axis] >= bound

    def cut(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        t = (bound - a[axis]) / (b[axis] - a[axis])  # a and b straddle the line, so no zero division
        x, y = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        # Pin the cut coordinate to the line exactly: rounding must not leave it a hair outside.
        return (bound, y) if axis == 0 else (x, bound)

    out: list[tuple[float, float]] = []
    for i, cur in enumerate(poly):
        prev = poly[i - 1]
        if inside(cur):
            if not inside(prev):
                out.append(cut(prev, cur))
            out.append(cur)
        elif inside(prev):
            out.append(cut(prev, cur))
    return out


def polygon_area(poly: list[tuple[float, float]]) -> float:
    """Shoelace area of a simple polygon, in px^2."""
    n = len(poly)
    twice = sum(poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1] for i in range(n))
    return abs(twice) / 2.0


def segmentation_map(objects: list[SceneObject], img_size: int) -> Image.Image:
    """The ADE20K-style label map of a scene (subject first): 'L' PNG values 1 + index in SEG_CLASSES.

    The subject's pixels carry its class, everything else is background. Objects are drawn
    in paint order (``z``), so a distractor painted over the subject takes the pixels it
    covers back to background, as in the image. A "hollow" subject is only an outline in
    the image, but its label region is the whole polygon interior: the object is the shape,
    not its ring of paint, and a few-pixel-wide ring label would be mostly boundary, which
    dense heads at 1/4 to 1/32 scale cannot resolve. (PIL draws the outline inside the
    polygon, so every painted pixel is still labelled.) The same polygon and rasteriser as
    the painting keep label edges pixel-aligned with the image.
    """
    background = SEG_CLASSES.index("background") + 1
    label = Image.new("L", (img_size, img_size), background)
    draw = ImageDraw.Draw(label)
    subject = objects[0]
    for obj in sorted(objects, key=lambda o: o.z):
        draw.polygon(obj.polygon, fill=SEG_CLASSES.index(obj.label) + 1 if obj is subject else background)
    return label


def coco_annotation(obj: SceneObject, ann_id: int, image_id: int, img_size: int) -> dict | None:
    """One COCO instance annotation, or None where the clipped object is too small to be a box.

    The polygon is amodal: occluders are not subtracted, as COCO polygons outline
    the object and mmdet's box targets are its full extent. Coordinates are rounded
    to 0.01 px before bbox and area are taken, so the three agree in the file.
    """
    poly = [(round(x, 2), round(y, 2)) for x, y in clip_polygon(obj.polygon, img_size, img_size)]
    if len(poly) < 3:
        return None
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0 = min(xs), min(ys)
    w, h = round(max(xs) - x0, 2), round(max(ys) - y0, 2)
    area = polygon_area(poly)
    # mmdet drops boxes under 1 px itself; never writing them keeps the file valid on its own.
    if area < 4.0 or w < 1.0 or h < 1.0:
        return None
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": DET_CLASSES.index(obj.label) + 1,
        "segmentation": [[c for p in poly for c in p]],
        "area": round(area, 2),
        "bbox": [x0, y0, w, h],
        "iscrowd": 0,
    }


def _dense_marker(task: str, fmt: str, seed: int, n_train: int, n_val: int, classes: tuple[str, ...],
                  world: WorldConfig, **extra: object) -> str:
    marker = {
        "provenance": "synthetic",
        "task": task,
        "format": fmt,
        "generator_version": GENERATOR_VERSION,
        "label_version": DENSE_LABEL_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "classes": list(classes),
        "world": asdict(world),
        **extra,
    }
    return json.dumps(marker, indent=2)


def write_segmentation(root: str | Path, *, seed: int = 0, n_train: int = 2000, n_val: int = 500,
                       world: WorldConfig = DENSE_WORLD, progress: bool = True) -> Path:
    """Write an ADE20K-layout split plus a marker file.

    ``root/images/{training,validation}/<n>.jpg`` and
    ``root/annotations/{training,validation}/<n>.png``. Label values are
    1..len(SEG_CLASSES) with 0 reserved for "unlabelled", as in ADE20K, so mmseg's
    ``reduce_zero_label=True`` maps them to 0..4; a synthetic map has no 0s.
    """
    from tqdm import tqdm

    root = Path(root)
    for folder, split, count in (("training", "seg-train", n_train), ("validation", "seg-val", n_val)):
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(count), desc=f"synthetic seg {folder}", disable=not progress, leave=False):
            image, objects = render_scene(seed, split, i, world)
            image.save(img_dir / f"{i:06d}.jpg", quality=95)
            segmentation_map(objects, world.img_size).save(ann_dir / f"{i:06d}.png")
    atomic_write_text(root / MARKER_FILE,
                      _dense_marker("seg", "ade20k", seed, n_train, n_val, SEG_CLASSES, world, reduce_zero_label=True))
    return root


def write_detection(root: str | Path, *, seed: int = 0, n_train: int = 2000, n_val: int = 500,
                    world: WorldConfig = DENSE_WORLD, progress: bool = True) -> Path:
    """Write a COCO-layout split plus a marker file.

    ``root/{train,val}2017/<id:012d>.jpg`` and
    ``root/annotations/instances_{train,val}2017.json``, one instance per scene (the
    subject; none where it is clipped to under 4 px²), category ids 1..16 in `class_names` order.
    """
    from tqdm import tqdm

    root = Path(root)
    categories = [{"id": k + 1, "name": name, "supercategory": "subject"} for k, name in enumerate(DET_CLASSES)]
    n_annotations = {}
    for folder, split, count in (("train2017", "det-train", n_train), ("val2017", "det-val", n_val)):
        img_dir = root / folder
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(count), desc=f"synthetic det {folder}", disable=not progress, leave=False):
            image_id = i + 1
            image, objects = render_scene(seed, split, i, world)
            file_name = f"{image_id:012d}.jpg"
            image.save(img_dir / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
            # One instance, the subject: the distractors are background, as in the label maps.
            ann = coco_annotation(objects[0], len(annotations) + 1, image_id, world.img_size)
            if ann is not None:
                annotations.append(ann)
        coco = {
            # A dict, as in COCO's own files: pycocotools' COCO.info() iterates its items.
            "info": {"description": "pela-bench synthetic shapes", "version": f"{GENERATOR_VERSION}.{DENSE_LABEL_VERSION}"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        atomic_write_text(root / "annotations" / f"instances_{folder}.json", json.dumps(coco))
        n_annotations[folder] = len(annotations)
    atomic_write_text(root / MARKER_FILE,
                      _dense_marker("det", "coco", seed, n_train, n_val, DET_CLASSES, world,
                                    n_annotations=n_annotations))
    return root


def read_marker(root: str | Path) -> dict | None:
    """The synthetic marker of a data root, or None for real data."""
    path = Path(root) / MARKER_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
