"""Weakly supervised visual grounding (RefCOCO+ in ALBEF's JSON), the paper's Table 7.

Trained like retrieval, on image-expression pairs only (ITC + ITM; no box is ever
seen in training). At test time ALBEF's Grad-CAM locates the expression: the
cross-attention maps of one fusion layer (the third, ALBEF's ``block_num`` 8),
times the positive part of their gradient of the ITM "match" score, averaged over
heads and the expression's tokens, give a heat map over image patches; upsampled
to the image, each proposal box scores the map's mass inside it over the square
root of its area, and the best one is the answer. Accuracy: the share of
expressions whose chosen box overlaps the ground truth with IoU >= 0.5.

Data root: ``*_train.json`` (``{"image", "caption", "image_id"}`` per expression) and
``*_test.json`` (``{"image", "text", "ref_id", "bbox": [x, y, w, h], "proposals": [[x, y, w, h], ...]}``,
boxes in the image's own pixels: ALBEF keeps the proposals in a separate ``dets.json``
keyed by ref id; here they are inlined in each entry) and ``vocab.txt``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from common.errors import PelaBenchError
from tasks.base import Metric, TaskData, check_files, register_task
from tasks.synthetic import read_marker
from tasks.synthetic_vl import grounding_world, write_grounding
from tasks.text import Tokenizer, pre_caption
from tasks.vl_data import (CaptionPairs, FineTunedVLTask, ImageTexts, VLSchedule, check_images_exist, find_json,
                           image_path, image_transforms, read_entries, training_pairs)

log = logging.getLogger("pela_bench")


@dataclass(frozen=True)
class GroundingSchedule(VLSchedule):
    # Fusion layer whose cross-attention Grad-CAM reads (0: the first); None: the third (ALBEF's), or the
    # last when the model has fewer.
    gradcam_layer: int | None = None


@dataclass(frozen=True)
class GroundingData:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    sizes: dict[str, tuple[int, int]]  # test image path -> (width, height)
    tokenizer: Tokenizer
    img_size: int


def _box(value: Any) -> list[float] | None:
    """A valid ``[x, y, w, h]`` as floats, or None."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value] if value[2] > 0 and value[3] > 0 else None


def _clip(box: list[float], width: int, height: int) -> list[float] | None:
    x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
    x1, y1 = min(box[0] + box[2], float(width)), min(box[1] + box[3], float(height))
    return [x0, y0, x1 - x0, y1 - y0] if x1 > x0 and y1 > y0 else None


def _read_test(path: Path, root: Path) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]], int]:
    """Test entries with boxes checked against their image's size (read from its header):
    a box partly outside is clipped and counted, one wholly outside is an error naming it."""
    from PIL import Image

    entries = read_entries(path, {"image": str, "text": str, "bbox": list, "proposals": list})
    sizes: dict[str, tuple[int, int]] = {}
    clipped = 0
    for i, e in enumerate(entries):
        if not pre_caption(e["text"]):
            raise PelaBenchError(f"{path} entry {i}: an empty referring expression")
        where = str(image_path(root, e))
        if where not in sizes:
            if not Path(where).is_file():
                raise PelaBenchError(f"{path} entry {i}: image {where} not found")
            try:
                with Image.open(where) as img:
                    sizes[where] = img.size
            except OSError as exc:
                raise PelaBenchError(f"cannot read image {where}: {exc}") from None
        w, h = sizes[where]
        boxes = [_box(e["bbox"]), *(_box(p) for p in e["proposals"])]
        if not e["proposals"] or any(b is None for b in boxes):
            raise PelaBenchError(f"{path} entry {i}: 'bbox' and every proposal must be [x, y, w, h] with w, h > 0, "
                                 "and there must be at least one proposal")
        inside = [_clip(b, w, h) for b in boxes]
        if any(b is None for b in inside):
            raise PelaBenchError(f"{path} entry {i}: a box lies wholly outside its {w}x{h} image {where}")
        outside = [b[0] < 0 or b[1] < 0 or b[0] + b[2] > w + 1e-3 or b[1] + b[3] > h + 1e-3 for b in boxes]
        clipped += sum(outside)
        e["bbox"], *e["proposals"] = [c if out else b for b, c, out in zip(boxes, inside, outside)]
    return entries, sizes, clipped


def _index(_entry: dict[str, Any], index: int) -> dict[str, int]:  # module level: loader workers pickle it
    return {"index": index}


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def pick_proposal(heat: torch.Tensor, proposals: list[list[float]]) -> int:
    """ALBEF's box score: the heat map's mass inside the box over the square root of its area."""
    scores = []
    for x, y, w, h in proposals:
        x0, y0 = int(x), int(y)
        x1, y1 = max(x0 + 1, int(math.ceil(x + w))), max(y0 + 1, int(math.ceil(y + h)))
        scores.append(float(heat[y0:y1, x0:x1].sum()) / math.sqrt(w * h))
    return max(range(len(scores)), key=scores.__getitem__)


def gradcam(model: nn.Module, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
            layer: int) -> torch.Tensor:
    """Grad-CAM heat maps (B, grid, grid) over image patches for each image-text pair."""
    attention = model.fusion_cross_attention(layer)
    attention.keep_maps = True  # the unfused path, which keeps the attention probabilities
    try:
        with torch.enable_grad():
            image = image.detach().requires_grad_(True)  # a graph to differentiate, whatever trains
            score = model(image=image, text_ids=text_ids, text_mask=text_mask)[:, 1].sum()
            maps = attention.maps
            (grad,) = torch.autograd.grad(score, maps)
    finally:
        attention.keep_maps, attention.maps = False, None
    cam = (maps.detach() * grad.clamp(min=0))[..., 1:]  # (B, heads, text, patches); the image [CLS] left out
    real = text_mask[:, None, :, None].to(cam.dtype)
    cam = ((cam * real).sum(2) / real.sum(2)).mean(1)  # over the expression's tokens, then the heads
    grid = math.isqrt(cam.shape[-1])
    if grid * grid != cam.shape[-1]:
        raise PelaBenchError(f"Grad-CAM needs a square patch grid; the image has {cam.shape[-1]} patches")
    return cam.view(-1, grid, grid)


@register_task
class GroundingTask(FineTunedVLTask):
    name = "grounding"
    aliases = ("refcoco+", "wsg")
    metrics = (Metric("grounding_acc", "grounding acc"),)
    primary_metric = "grounding_acc"
    needs = ("patch_grid",)  # Grad-CAM maps the cross-attention back onto the image's patch grid
    measure_scope = ("params: the retrieval-shaped model with its momentum copies, as the paper counts; GFLOPs and "
                     "latency: the ITM forward of one image-expression pair (Grad-CAM adds one backward)")
    world, writer = grounding_world, write_grounding
    layout = ("ALBEF grounding JSON: <root>/*_train.json ({image, caption, image_id} per expression), "
              "<root>/*_test.json ({image, text, ref_id, bbox, proposals} per expression, boxes [x, y, w, h]), "
              "<root>/vocab.txt")
    schedules = {
        "tiny": GroundingSchedule(epochs=1, lr=1e-3, batch_size=16, eval_batch_size=32, synthetic_train=16,
                                  synthetic_test=8, latency_repeats=3),
        "smoke": GroundingSchedule(epochs=3, lr=5e-4, batch_size=32, warmup_epochs=0.5, synthetic_train=300,
                                   synthetic_test=150),
        # ALBEF's grounding fine-tune: 5 epochs at 1e-5, batch 32 per GPU (x 8).
        "paper": GroundingSchedule(epochs=5, lr=1e-5, batch_size=32, synthetic_train=5000, synthetic_test=1000),
    }

    def load(self, root: Path, schedule: GroundingSchedule, img_size: int | None) -> TaskData:
        root = Path(root)
        self.check_root(root)
        train = read_entries(find_json(root, "_train.json"), {"image": str, "caption": str, "image_id": (str, int)})
        check_images_exist(root, train)
        test, sizes, clipped = _read_test(find_json(root, "_test.json"), root)
        if clipped:
            log.warning("grounding: %d box(es) of %s reach outside their image; clipped to it",
                        clipped, find_json(root, "_test.json"))
        data = GroundingData(train, test, sizes, self.tokenizer(root), img_size or 384)
        audit = {"train_pairs": len(train), "test_expressions": len(test),
                 "proposals_per_expression": round(sum(len(e["proposals"]) for e in test) / len(test), 2),
                 "boxes_clipped": clipped}
        return TaskData(root, "real" if read_marker(root) is None else "synthetic", data, audit)

    def check_data(self, data: TaskData, progress: bool = True) -> dict[str, int]:
        d: GroundingData = data.content
        paths = sorted({image_path(data.root, e) for e in (*d.train, *d.test)})
        return {"images": check_files(paths, "checking grounding images", progress)}

    def layer(self, model: nn.Module, schedule: GroundingSchedule) -> int:
        if schedule.gradcam_layer is not None:
            return schedule.gradcam_layer
        cfg = model.cfg.text
        return min(2, cfg.depth - cfg.fusion_start - 1)

    def task_model(self, student: nn.Module) -> nn.Module:
        student.drop_mlm_head()  # trained like the retrieval model, on image-expression pairs
        return student

    def train_objective(self, model: nn.Module) -> str:
        return "itc_itm"

    def train_set(self, data: TaskData, schedule: GroundingSchedule) -> CaptionPairs:
        return training_pairs(data, schedule.text)

    def row_details(self, model: nn.Module, schedule: GroundingSchedule) -> dict[str, Any]:
        return {"gradcam_layer": self.layer(model, schedule)}

    def evaluate(self, model: nn.Module, data: TaskData, schedule: GroundingSchedule, device: torch.device,
                 workers: int = 0) -> dict[str, float]:
        d: GroundingData = data.content
        model.eval()
        layer = self.layer(model, schedule)
        transform = image_transforms(d.img_size, data.provenance == "synthetic", train=False)
        expressions = ImageTexts(data.root, d.test, d.tokenizer, transform, schedule.text, "text", extra=_index)
        loader = DataLoader(expressions,
                            batch_size=schedule.eval_batch_size, num_workers=workers)
        hits = 0
        for b in loader:
            maps = gradcam(model, b["image"].to(device), b["text_ids"].to(device), b["text_mask"].to(device), layer)
            for heat, index in zip(maps.cpu(), b["index"].tolist()):
                e = d.test[index]
                w, h = d.sizes[str(image_path(data.root, e))]
                full = F.interpolate(heat[None, None], size=(h, w), mode="bicubic", align_corners=False)[0, 0]
                chosen = e["proposals"][pick_proposal(full, e["proposals"])]
                hits += box_iou(chosen, e["bbox"]) >= 0.5
        return {"grounding_acc": 100.0 * hits / len(d.test)}
