"""Defect labels for supervised training, from the formats people already have (MVTec-layout pixel masks, COCO
JSON, YOLO txt, Pascal VOC XML) into one typed form, so the detection/segmentation head never cares where a label
came from. A bad label is one DataError line naming the file and line (torch-free: numpy, OpenCV, pycocotools).

Coordinates are pixel edges: pixel (row r, col c) spans [c, c+1) x [r, r+1), so a box (x0, y0, x1, y1) covers
x1 - x0 pixels. Polygons and RLE masks go through pycocotools (the standard COCO tools, whose evaluator #17
wants too), so a mask here is the mask that evaluator scores against.
"""
from __future__ import annotations

import json
import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.parsers import expat

import cv2
import numpy as np
import yaml
from pycocotools import mask as coco_mask

from linesight.errors import DataError
from linesight.export.images import IMAGE_SUFFIXES, read_image
from linesight.trainer.data import open_dataset, read_mask

LabelFormat = Literal["auto", "masks", "coco", "yolo", "voc"]
Box = tuple[float, float, float, float]

MAX_LABEL_BYTES = 64 * 1024 * 1024  # a label file bigger than this is a mistake or an attack, not labels
MAX_OBJECTS = 100_000  # per image: bounds memory and time whatever a file claims
# Converters round: a coordinate up to 1 px past the border is clipped, anything further is a wrong label.
EDGE_TOLERANCE_PX = 1.0
YOLO_NAME_FILES = ("data.yaml", "data.yml", "classes.txt")
_JSON_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True, eq=False)
class LabeledObject:
    """One labeled defect: class, box (x0, y0, x1, y1 px) and its shape when the label has one: polygons
    ((n, 2) x, y px each) or a bool mask cropped to its own extent, whose top-left pixel is `mask_at` (x, y)."""

    cls: str
    box: Box
    polygons: tuple[np.ndarray, ...] = ()
    mask: np.ndarray | None = None
    mask_at: tuple[int, int] = (0, 0)

    def region(self, size: tuple[int, int]) -> np.ndarray:
        """The object's pixels in an image of `size` (h, w): its mask, else its filled polygons, else its box."""
        out = np.zeros(size, bool)
        window, pixels = self.pixels(size)
        out[window] = pixels
        return out

    def pixels(self, size: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
        """The object's pixels within its own extent (rows, cols slices of the image and a bool array), so painting
        many small objects costs their area, not the image's each."""
        if self.mask is not None:
            x, y = self.mask_at
            return (slice(y, y + self.mask.shape[0]), slice(x, x + self.mask.shape[1])), self.mask
        if self.polygons:  # rasterised as the COCO evaluator rasterises ground truth, in a window around them
            h, w = size
            pts = np.concatenate(self.polygons)
            x0, y0 = (min(int(math.floor(pts[:, i].min())), n - 1) for i, n in ((0, w), (1, h)))
            x1 = min(max(int(math.ceil(pts[:, 0].max())), x0 + 1), w)
            y1 = min(max(int(math.ceil(pts[:, 1].max())), y0 + 1), h)
            shifted = [(p - (x0, y0)).ravel().tolist() for p in self.polygons]
            rle = coco_mask.merge(coco_mask.frPyObjects(shifted, y1 - y0, x1 - x0))
            return (slice(y0, y1), slice(x0, x1)), _decode(rle).astype(bool)
        x0, y0, x1, y1 = (int(round(v)) for v in self.box)
        return (slice(y0, y1), slice(x0, x1)), np.ones((max(y1 - y0, 0), max(x1 - x0, 0)), bool)


@dataclass(frozen=True, eq=False)
class ImageLabels:
    """Every labeled defect of one image; no objects means a good image (a negative for the head)."""

    image: Path
    size: tuple[int, int]  # h, w
    objects: tuple[LabeledObject, ...]


@dataclass(frozen=True, eq=False)
class LabelSet:
    """A labeled set: the classes in the source's order (a head's class index stays put even when a class has no
    examples) and every image's labels."""

    classes: tuple[str, ...]
    images: tuple[ImageLabels, ...]


def class_mask(labels: ImageLabels, classes: Sequence[str]) -> np.ndarray:
    """Segmentation target (h, w) int32: 0 background, i + 1 where an object of classes[i] lies (later objects
    paint over earlier ones)."""
    index = {c: i + 1 for i, c in enumerate(classes)}
    out = np.zeros(labels.size, np.int32)
    for obj in labels.objects:
        if obj.cls not in index:
            raise DataError(f"{labels.image}: class '{obj.cls}' is not among the classes {list(classes)}")
        window, pixels = obj.pixels(labels.size)
        out[window][pixels] = index[obj.cls]
    return out


def read_labels(path: str | Path, format: LabelFormat = "auto", image_root: str | Path | None = None) -> LabelSet:
    """Labels at `path` in any supported format (auto: told apart by layout, docs/data.md). `image_root`: where
    a COCO file's images are (default: the JSON's folder, then images/ beside it)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"labels {p}: no such file or folder")
    kind = detect_format(p) if format == "auto" else format
    readers = {"masks": _read_masks, "yolo": _read_yolo, "voc": _read_voc}
    if kind != "coco" and kind not in readers:
        raise DataError(f"labels {p}: unknown label format '{kind}' (masks, coco, yolo, voc or auto)")
    if kind == "coco":
        if not p.is_file():
            raise DataError(f"labels {p}: COCO labels are one .json file, this is a folder")
        return _read_coco(p, Path(image_root) if image_root else None)
    if not p.is_dir():
        raise DataError(f"labels {p}: {kind} labels are a folder, this is a file")
    return readers[kind](p)


def detect_format(path: Path) -> LabelFormat:
    """Tell the format from the layout, so a user points at what they have and nothing more."""
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_dir():
        if (path / "ground_truth").is_dir() or (path / "test").is_dir():
            return "masks"
        if any((path / n).is_file() for n in YOLO_NAME_FILES):
            return "yolo"
        if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
            return "voc"
    raise DataError(f"labels {path}: cannot tell the label format: expected a COCO .json file, an MVTec folder "
                    "(test/, ground_truth/), a YOLO folder (classes.txt or data.yaml) or a VOC folder (*.xml)")


# ---------------------------------------------------------------- shared checks
def _read_bytes(path: Path) -> bytes:
    """A label file's bytes, size-bounded before anything is read."""
    try:
        size = path.stat().st_size
        if size > MAX_LABEL_BYTES:
            raise DataError(f"{path}: label file of {size / 2**20:.1f} MB refused (limit {MAX_LABEL_BYTES >> 20} MB)")
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read label file: {exc.strerror or exc}") from None


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: cannot read label file: not UTF-8 text (byte {exc.start})") from None


def _check_box(box: Box, size: tuple[int, int], where: str) -> Box:
    """Refuse an empty box or one past the border by more than the tolerance; clip the rest into the image."""
    x0, y0, x1, y1 = box
    h, w = size
    if not (x1 > x0 and y1 > y0):
        raise DataError(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area")
    tol = EDGE_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > w + tol or y1 > h + tol:
        raise DataError(f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {w}x{h} image")
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))


def _polygon(coords: Sequence[float], size: tuple[int, int], where: str) -> np.ndarray:
    """Flat x, y pixel coordinates -> (n, 2) array, at least 3 points, none outside the image."""
    if len(coords) % 2:
        raise DataError(f"{where}: polygon has an odd number of coordinates ({len(coords)})")
    if len(coords) < 6:
        raise DataError(f"{where}: polygon with fewer than 3 points ({len(coords) // 2})")
    pts = np.asarray(coords, np.float64).reshape(-1, 2)
    h, w = size
    tol = EDGE_TOLERANCE_PX
    bad = (pts[:, 0] < -tol) | (pts[:, 1] < -tol) | (pts[:, 0] > w + tol) | (pts[:, 1] > h + tol)
    if bad.any():
        x, y = pts[int(np.argmax(bad))]
        raise DataError(f"{where}: polygon point ({x:g}, {y:g}) is outside the {w}x{h} image")
    return np.clip(pts, 0.0, [w, h])


def _extent(polygons: Sequence[np.ndarray]) -> Box:
    pts = np.concatenate(polygons)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def _mask_object(cls: str, mask: np.ndarray, box: Box | None) -> LabeledObject:
    """A full-image mask kept only over its own extent; the box is the given one, else the mask's extent."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    crop = mask[y0:y1, x0:x1].astype(bool)
    return LabeledObject(cls, box or (float(x0), float(y0), float(x1), float(y1)), mask=crop, mask_at=(x0, y0))


def _image_size(path: Path) -> tuple[int, int]:
    h, w = read_image(path).shape[:2]
    return int(h), int(w)


# ---------------------------------------------------------------- MVTec-layout pixel masks
def _read_masks(root: Path) -> LabelSet:
    """test/<type>/<stem> with ground_truth/<type>/<stem>_mask.png, read by the dataset reader every verb uses;
    each connected defect region (8-connected) becomes one object of class <type>; good images have none."""
    ds = open_dataset(root)
    classes = tuple(sorted({s.defect_type for s in ds.test if s.label}))
    images = [ImageLabels(p, _image_size(p), ()) for p in ds.train]
    for s in ds.test:
        if s.label and s.mask_path is None:
            expected = root / "ground_truth" / s.defect_type / f"{s.path.stem}_mask.png"
            raise DataError(f"{s.path}: its mask {expected} is missing")
        size = _image_size(s.path)
        images.append(ImageLabels(s.path, size, _components(read_mask(s, size), s.defect_type, str(s.mask_path))))
    return LabelSet(classes, tuple(images))


def _components(mask: np.ndarray, cls: str, where: str) -> tuple[LabeledObject, ...]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n - 1 > MAX_OBJECTS:
        raise DataError(f"{where}: {n - 1} separate defect regions, more than {MAX_OBJECTS} for one image")
    objects = []
    for i in range(1, n):
        x, y, w, h = (int(v) for v in stats[i, :4])
        crop = labels[y:y + h, x:x + w] == i
        objects.append(LabeledObject(cls, (float(x), float(y), float(x + w), float(y + h)), mask=crop, mask_at=(x, y)))
    return tuple(objects)


# ---------------------------------------------------------------- COCO JSON
def _read_coco(path: Path, image_root: Path | None) -> LabelSet:
    """COCO instances: images, categories and annotations with bbox [x, y, w, h] and polygons or RLE."""
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}:1: not a COCO file: the top level is not an object")
    cats: dict[int, str] = {}
    imgs: dict[int, tuple[Path, tuple[int, int]]] = {}
    objects: dict[int, list[LabeledObject]] = {}
    roots = [image_root] if image_root else [path.parent, path.parent / "images"]
    for key, add in (("categories", lambda c, at: _coco_category(cats, c, at)),
                     ("images", lambda im, at: _coco_image(imgs, objects, im, roots, at)),
                     ("annotations", lambda ann, at: _coco_annotation(objects, ann, cats, imgs, at))):
        value = doc.get(key, [])
        if not isinstance(value, list):
            raise DataError(f"{path}: '{key}' must be a list")
        for i, item in enumerate(value):
            try:
                add(item, f"{key}[{i}]")
            except DataError as exc:  # the line is looked up only now: json keeps no positions
                line = _json_line(text, key, i)
                raise DataError(f"{path}:{line}: {exc}" if line else f"{path}: {exc}") from None
    classes = tuple(cats[k] for k in sorted(cats))
    return LabelSet(classes, tuple(ImageLabels(p, size, tuple(objects[i])) for i, (p, size) in imgs.items()))


def _is_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _coco_category(cats: dict[int, str], c: object, at: str) -> None:
    if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str) or not c["name"]:
        raise DataError(f"{at}: a category needs an integer id and a name")
    if c["id"] in cats:
        raise DataError(f"{at}: duplicate category id {c['id']}")
    if c["name"] in cats.values():
        raise DataError(f"{at}: duplicate category name '{c['name']}'")
    cats[c["id"]] = c["name"]


def _coco_image(imgs: dict[int, tuple[Path, tuple[int, int]]], objects: dict[int, list[LabeledObject]],
                im: object, roots: list[Path], at: str) -> None:
    if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str):
        raise DataError(f"{at}: an image needs an integer id and a file_name")
    w, h = im.get("width"), im.get("height")
    if not (_is_id(w) and _is_id(h) and w > 0 and h > 0):
        raise DataError(f"{at}: width and height must be positive integers (got {w!r} x {h!r})")
    if im["id"] in imgs:
        raise DataError(f"{at}: duplicate image id {im['id']}")
    found = next((r / im["file_name"] for r in roots if (r / im["file_name"]).is_file()), None)
    if found is None:
        raise DataError(f"{at}: image '{im['file_name']}' is missing (looked in {', '.join(str(r) for r in roots)})")
    imgs[im["id"]] = (found, (h, w))
    objects[im["id"]] = []


def _coco_annotation(objects: dict[int, list[LabeledObject]], ann: object, cats: dict[int, str],
                     imgs: dict[int, tuple[Path, tuple[int, int]]], at: str) -> None:
    if not isinstance(ann, dict):
        raise DataError(f"{at}: an annotation must be an object")
    image_id, cat_id = ann.get("image_id"), ann.get("category_id")
    if not _is_id(image_id) or image_id not in imgs:
        raise DataError(f"{at}: unknown image id {image_id!r} (not in images)")
    if not _is_id(cat_id) or cat_id not in cats:
        raise DataError(f"{at}: unknown category id {cat_id!r} (not in categories)")
    if len(objects[image_id]) >= MAX_OBJECTS:
        raise DataError(f"{at}: more than {MAX_OBJECTS} objects for image id {image_id}")
    objects[image_id].append(_coco_object(ann, cats[cat_id], imgs[image_id][1], at))


def _coco_object(ann: dict, cls: str, size: tuple[int, int], at: str) -> LabeledObject:
    """bbox [x, y, w, h] and/or segmentation (polygons or RLE); the box comes from the shape when bbox is absent."""
    box = None
    if "bbox" in ann:
        b = ann["bbox"]
        if not (isinstance(b, list) and len(b) == 4 and all(_finite(v) for v in b)):
            raise DataError(f"{at}: bbox must be [x, y, width, height] numbers, got {b!r}"[:200])
        box = _check_box((b[0], b[1], b[0] + b[2], b[1] + b[3]), size, at)
    seg = ann.get("segmentation", [])
    if isinstance(seg, dict):
        return _mask_object(cls, _rle_mask(seg, size, at), box)
    if not isinstance(seg, list) or not all(isinstance(p, list) and all(_finite(v) for v in p) for p in seg):
        raise DataError(f"{at}: segmentation must be polygons (lists of x, y numbers) or an RLE object")
    polygons = tuple(_polygon(p, size, at) for p in seg)
    if box is None:
        if not polygons:
            raise DataError(f"{at}: no bbox and no segmentation")
        box = _check_box(_extent(polygons), size, at)
    return LabeledObject(cls, box, polygons)


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _rle_mask(seg: dict, size: tuple[int, int], at: str) -> np.ndarray:
    """COCO RLE (counts as a list, or compressed string) -> (h, w) uint8, refused unless it covers the image
    exactly: pycocotools leaves pixels past short counts uninitialised, so a compressed one must re-encode equal
    (a list is checked by its sum)."""
    h, w = size
    counts = seg.get("counts")
    if seg.get("size") != [h, w]:
        raise DataError(f"{at}: RLE size {seg.get('size')!r} is not the image's [height, width] [{h}, {w}]")
    if isinstance(counts, list):
        if not all(_is_id(c) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise DataError(f"{at}: RLE counts must be non-negative integers summing to {h} x {w} = {h * w}")
        rle = coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii", "replace")}
    else:
        raise DataError(f"{at}: RLE counts must be a list of integers or a compressed string")
    try:
        mask = _decode(rle)
    except ValueError:
        mask = None
    if mask is None or (isinstance(counts, str)
                        and coco_mask.encode(np.asfortranarray(mask))["counts"] != rle["counts"]):
        raise DataError(f"{at}: RLE counts are corrupt (they do not cover the {w}x{h} image exactly)")
    if not mask.any():
        raise DataError(f"{at}: RLE mask is empty")
    return mask


def _decode(rle: dict) -> np.ndarray:
    """pycocotools' decode, without the DeprecationWarning its compiled code raises on every call under NumPy 2
    (it asks for copy=False; the mask is still right): one warning per object would bury the real ones."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
        return coco_mask.decode(rle)


def _json_line(text: str, key: str, index: int) -> int | None:
    """Line of element `index` of the top-level array `key`, found by walking the (valid) JSON once more, only
    when an error needs it; json itself keeps no positions."""
    dec = json.JSONDecoder()
    i = _JSON_WS.match(text, text.index("{") + 1).end()
    found = None
    while text[i] != "}":
        i = _JSON_WS.match(text, i + (text[i] == ",")).end()
        name, i = json.decoder.scanstring(text, i + 1)
        i = _JSON_WS.match(text, _JSON_WS.match(text, i).end() + 1).end()  # past ':'
        if name == key and text[i] == "[":
            n, i = 0, _JSON_WS.match(text, i + 1).end()
            while text[i] != "]":
                i = _JSON_WS.match(text, i + (text[i] == ",")).end()
                if n == index:
                    found = i  # keep walking: with a duplicate key, json keeps the last
                _, i = dec.raw_decode(text, i)
                n, i = n + 1, _JSON_WS.match(text, i).end()
            i += 1
        else:
            _, i = dec.raw_decode(text, i)
        i = _JSON_WS.match(text, i).end()
    return None if found is None else text.count("\n", 0, found) + 1


# ---------------------------------------------------------------- YOLO txt
def _read_yolo(root: Path) -> LabelSet:
    """One txt per image, `class cx cy w h` or `class x1 y1 x2 y2 ...` (YOLO-seg), normalised to 0..1. Layout:
    labels/**.txt beside images/** (data.yaml) or txt files beside their images (classes.txt); an image with no
    txt is a good image."""
    names, names_file = _yolo_names(root)
    if (root / "labels").is_dir():
        label_root, image_root, pattern = root / "labels", root / "images", "**/*"
    else:
        label_root, image_root, pattern = root, root, "*"
    images: dict[tuple[Path, str], Path] = {}
    for p in sorted(image_root.glob(pattern)) if image_root.is_dir() else []:
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            key = (p.relative_to(image_root).parent, p.stem)
            if key in images:
                raise DataError(f"{p}: two images for one label file ({images[key].name} and {p.name})")
            images[key] = p
    out = []
    for txt in sorted(label_root.glob(f"{pattern}.txt")):
        if txt.name == "classes.txt" or not txt.is_file():
            continue
        image = images.pop((txt.relative_to(label_root).parent, txt.stem), None)
        if image is None:
            raise DataError(f"{txt}: image missing: no {txt.stem} with an image suffix ({' '.join(IMAGE_SUFFIXES)})"
                            f" in {image_root / txt.relative_to(label_root).parent}")
        size = _image_size(image)
        out.append(ImageLabels(image, size, _yolo_file(txt, names, names_file, size)))
    out += [ImageLabels(p, _image_size(p), ()) for p in images.values()]
    return LabelSet(names, tuple(sorted(out, key=lambda x: x.image)))


def _yolo_names(root: Path) -> tuple[tuple[str, ...], Path]:
    """Class names from data.yaml's `names:` (a list, or a dict id -> name) or classes.txt (one per line)."""
    path = next(root / n for n in YOLO_NAME_FILES if (root / n).is_file())
    if path.suffix == ".txt":
        names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    else:
        try:
            doc = yaml.safe_load(_read_text(path))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise DataError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML") from None
        raw = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(raw, dict) and all(_is_id(k) for k in raw) and sorted(raw) == list(range(len(raw))):
            raw = [raw[i] for i in range(len(raw))]
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            raise DataError(f"{path}: `names:` must be a list of class names or a map 0..n-1 -> name")
        names = [n.strip() for n in raw]
    if not names or not all(names):
        raise DataError(f"{path}: no class names (or an empty one)")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate class name in {names}")
    return tuple(names), path


def _yolo_file(txt: Path, names: tuple[str, ...], names_file: Path, size: tuple[int, int]
               ) -> tuple[LabeledObject, ...]:
    h, w = size
    objects: list[LabeledObject] = []
    for n, line in enumerate(_read_text(txt).splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        at = f"{txt}:{n}"
        if len(objects) >= MAX_OBJECTS:
            raise DataError(f"{at}: more than {MAX_OBJECTS} objects for one image")
        try:
            cid = int(tokens[0])
        except ValueError:
            raise DataError(f"{at}: class id '{tokens[0]}' is not an integer") from None
        if not 0 <= cid < len(names):
            raise DataError(f"{at}: class id {cid} is out of range (0..{len(names) - 1}, {names_file.name})")
        values = [_yolo_number(t, at) for t in tokens[1:]]
        if not values or len(values) % 2:
            raise DataError(f"{at}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', "
                            f"got {len(tokens)} values")
        off = next((v for v in values if not 0.0 <= v <= 1.0), None)
        if off is not None:
            raise DataError(f"{at}: coordinate {off:g} is not normalised (0..1)")
        if len(values) == 4:
            cx, cy, bw, bh = values
            box = _check_box(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h), size, at)
            objects.append(LabeledObject(names[cid], box))
        else:
            poly = _polygon([v * (w if k % 2 == 0 else h) for k, v in enumerate(values)], size, at)
            objects.append(LabeledObject(names[cid], _check_box(_extent([poly]), size, at), (poly,)))
    return tuple(objects)


def _yolo_number(token: str, at: str) -> float:
    try:
        v = float(token)
    except ValueError:
        raise DataError(f"{at}: '{token}' is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{at}: '{token}' is not a finite number")
    return v


# ---------------------------------------------------------------- Pascal VOC XML
def _read_voc(root: Path) -> LabelSet:
    """One XML per image (Annotations/*.xml with JPEGImages/, or XML files beside their images): <size> and
    <object><name>, <bndbox> xmin..ymax, 1-based inclusive as in the VOC devkit (0-based files read too)."""
    xml_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    out = [_voc_file(f, [f.parent, root / "JPEGImages"]) for f in sorted(xml_dir.glob("*.xml"))]
    classes = tuple(sorted({o.cls for im in out for o in im.objects}))
    return LabelSet(classes, tuple(out))


def _parse_xml(path: Path) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Parse with expat, refusing any DTD (no entity can be declared, so no expansion bomb, no external file) and
    keeping each element's line, which ElementTree itself drops."""
    builder = ET.TreeBuilder()
    lines: dict[ET.Element, int] = {}
    parser = expat.ParserCreate()

    def refuse(*_: object) -> None:
        raise DataError(f"{path}:{parser.CurrentLineNumber}: DTD and entity declarations are refused in labels")

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[builder.start(tag, attrs)] = parser.CurrentLineNumber

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(_read_bytes(path), True)
    except expat.ExpatError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid XML: {expat.errors.messages[exc.code]}") from None
    return builder.close(), lines


def _voc_file(path: Path, dirs: list[Path]) -> ImageLabels:
    root, lines = _parse_xml(path)
    if root.tag != "annotation":
        raise DataError(f"{path}:{lines[root]}: not a VOC annotation (root element <{root.tag}>)")
    name = (root.findtext("filename") or "").strip()
    image = next((d / name for d in dirs if name and (d / name).is_file()), None)
    if image is None:
        el = root.find("filename")
        raise DataError(f"{path}:{lines.get(el, lines[root])}: image missing: <filename> '{name}' not found in "
                        f"{', '.join(str(d) for d in dirs)}")
    size_el = root.find("size")
    if size_el is None:
        raise DataError(f"{path}:{lines[root]}: no <size> (width, height)")
    w, h = (_voc_number(size_el, tag, path, lines) for tag in ("width", "height"))
    if not (w >= 1 and h >= 1 and w == int(w) and h == int(h)):
        raise DataError(f"{path}:{lines[size_el]}: <size> must be positive whole pixels, got {w:g}x{h:g}")
    size = (int(h), int(w))
    objects = []
    for k, obj in enumerate(root.iter("object"), 1):
        at = f"{path}:{lines[obj]}: object {k}"
        if k > MAX_OBJECTS:
            raise DataError(f"{at}: more than {MAX_OBJECTS} objects for one image")
        cls = (obj.findtext("name") or "").strip()
        if not cls:
            raise DataError(f"{at}: no <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{at} ({cls}): no <bndbox>")
        x0, y0, x1, y1 = (_voc_number(bb, t, path, lines) for t in ("xmin", "ymin", "xmax", "ymax"))
        box = _check_box((max(x0 - 1, 0.0), max(y0 - 1, 0.0), x1, y1), size, f"{at} ({cls})")
        objects.append(LabeledObject(cls, box))
    return ImageLabels(image, size, tuple(objects))


def _voc_number(parent: ET.Element, tag: str, path: Path, lines: dict[ET.Element, int]) -> float:
    el = parent.find(tag)
    text = (el.text or "").strip() if el is not None else ""
    try:
        v = float(text)
    except ValueError:
        where = lines[el] if el is not None else lines[parent]
        raise DataError(f"{path}:{where}: <{tag}> must be a number, got '{text}'") from None
    if not math.isfinite(v):
        raise DataError(f"{path}:{lines[el]}: <{tag}> must be a finite number, got '{text}'")
    return v
