"""Label readers (trainer/labels.py): one scene in four formats reads to the same objects; every bad label is one
line naming the file and line; the masks reader on real magnetic tile images."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import make_subset
from linesight.errors import DataError
from linesight.trainer import labels as L
from linesight.trainer.labels import class_mask, read_labels

H, W = 48, 64
RECT = (10, 5, 20, 15)  # scratch: pixels x 10..19, y 5..14
TRIANGLE = [(40.0, 10.0), (60.0, 10.0), (50.0, 40.0)]  # crack, pixel-edge coordinates
CLASSES = ["scratch", "crack"]


def rect_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[RECT[1]:RECT[3], RECT[0]:RECT[2]] = True
    return m


def triangle_mask() -> np.ndarray:
    """Pixels whose centre is inside the triangle: half-plane signs, independent of OpenCV's fill."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    sides = [(bx - ax) * (yy - ay) - (by - ay) * (xx - ax)
             for (ax, ay), (bx, by) in zip(TRIANGLE, TRIANGLE[1:] + TRIANGLE[:1])]
    return np.all([s >= 0 for s in sides], 0) | np.all([s <= 0 for s in sides], 0)


def reference_class_mask() -> np.ndarray:
    ref = np.zeros((H, W), np.int32)
    ref[rect_mask()] = 1
    ref[triangle_mask()] = 2
    return ref


def near(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to one pixel of rasterisation at the border: each inside the other grown by one pixel."""
    k = np.ones((3, 3), np.uint8)
    grow = lambda m: cv2.dilate(m.astype(np.uint8), k).astype(bool)  # noqa: E731
    return bool(a.any() and b.any() and not (a & ~grow(b)).any() and not (b & ~grow(a)).any())


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(0).integers(60, 200, (H, W), dtype=np.uint8))
    return path


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


# ---------------------------------------------------------------- the scene in each format
def masks_layout(root: Path) -> Path:
    write_image(root / "train" / "good" / "g.png")
    write_image(root / "test" / "good" / "ok.png")
    for cls, mask in (("scratch", rect_mask()), ("crack", triangle_mask())):
        write_image(root / "test" / cls / "part.png")
        write_mask(root / "ground_truth" / cls / "part_mask.png", mask)
    return root


def coco_doc(**changes) -> dict:
    doc = {"images": [{"id": 1, "file_name": "part.png", "width": W, "height": H},
                      {"id": 2, "file_name": "ok.png", "width": W, "height": H}],
           "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "crack"}],
           "annotations": [{"id": 101, "image_id": 1, "category_id": 1, "bbox": [10, 5, 10, 10]},
                           {"id": 102, "image_id": 1, "category_id": 2, "bbox": [40, 10, 20, 30],
                            "segmentation": [[c for p in TRIANGLE for c in p]]}]}
    doc.update(changes)
    return doc


def coco_text(doc: dict) -> str:
    """One array element per line, so a test knows each element's line without the reader's help."""
    parts = [f'"{k}": [\n' + ",\n".join(json.dumps(e) for e in v) + "\n]" for k, v in doc.items()]
    return "{\n" + ",\n".join(parts) + "\n}\n"


def coco_layout(root: Path, doc: dict | None = None) -> Path:
    write_image(root / "images" / "part.png")
    write_image(root / "images" / "ok.png")
    path = root / "labels.json"
    path.write_text(coco_text(doc or coco_doc()))
    return path


def line_of(path: Path, element: dict) -> int:
    return path.read_text().splitlines().index(json.dumps(element)) + 1


def yolo_layout(root: Path, text: str | None = None) -> Path:
    write_image(root / "part.png")
    write_image(root / "ok.png")  # no txt: a good image
    (root / "classes.txt").write_text("scratch\ncrack\n")
    poly = " ".join(f"{x / W:.6f} {y / H:.6f}" for x, y in TRIANGLE)
    (root / "part.txt").write_text(text if text is not None else
                                   f"0 {15 / W:.6f} {10 / H:.6f} {10 / W:.6f} {10 / H:.6f}\n\n1 {poly}\n")
    return root


VOC_OBJECTS = """  <object>
    <name>scratch</name>
    <bndbox><xmin>11</xmin><ymin>6</ymin><xmax>20</xmax><ymax>15</ymax></bndbox>
  </object>
  <object>
    <name>crack</name>
    <bndbox>
      <xmin>41</xmin><ymin>11</ymin>
      <xmax>60</xmax><ymax>40</ymax>
    </bndbox>
  </object>
"""


def voc_layout(root: Path, objects: str = VOC_OBJECTS, filename: str = "part.png", head: str = "") -> Path:
    write_image(root / "JPEGImages" / "part.png")
    (root / "Annotations").mkdir(parents=True)
    path = root / "Annotations" / "part.xml"
    path.write_text(f'<?xml version="1.0"?>\n{head}<annotation>\n  <filename>{filename}</filename>\n'
                    f"  <size><width>{W}</width><height>{H}</height><depth>1</depth></size>\n{objects}</annotation>\n")
    return path


def objects_by_class(label_set: L.LabelSet) -> dict[str, L.LabeledObject]:
    return {o.cls: o for im in label_set.images if im.image.stem == "part" for o in im.objects}


# ---------------------------------------------------------------- the same scene in every format
def test_the_same_two_objects_read_alike_in_all_four_formats(tmp_path):
    sets = {"masks": read_labels(masks_layout(tmp_path / "mvtec")),
            "coco": read_labels(coco_layout(tmp_path / "coco")),
            "yolo": read_labels(yolo_layout(tmp_path / "yolo")),
            "voc": read_labels(voc_layout(tmp_path / "voc").parent.parent)}
    assert sets["coco"].classes == sets["yolo"].classes == ("scratch", "crack")  # the source's order
    assert sets["masks"].classes == sets["voc"].classes == ("crack", "scratch")  # no list in the source: sorted
    ref = reference_class_mask()
    for fmt, label_set in sets.items():
        objs = objects_by_class(label_set)
        assert sorted(objs) == ["crack", "scratch"], fmt
        assert np.allclose(objs["scratch"].box, RECT), fmt
        assert np.allclose(objs["crack"].box, (40, 10, 60, 40), atol=1.0), (fmt, objs["crack"].box)
        assert objs["scratch"].region((H, W)).sum() == 100, fmt
        if fmt != "voc":  # VOC has boxes only
            assert near(objs["crack"].region((H, W)), triangle_mask()), fmt
        parts = [im for im in label_set.images if im.image.stem == "part"]
        cm = np.max([class_mask(im, CLASSES) for im in parts], axis=0)  # masks: one image per type folder
        for k in (1, 2):
            assert near(cm == k, (ref == k) if fmt != "voc" else (ref == k) | (k == 2) & box_mask(40, 10, 60, 40)), \
                (fmt, k)
        goods = [im for im in label_set.images if im.image.stem != "part"]
        assert all(im.objects == () and im.size == (H, W) for im in goods), fmt
    assert {im.image.name for im in sets["masks"].images} == {"g.png", "ok.png", "part.png"}
    assert [im.image.name for im in sets["yolo"].images] == ["ok.png", "part.png"]


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_coco_rle_compressed_and_uncompressed_read_to_the_mask(tmp_path):
    from pycocotools import mask as coco_mask

    tri = triangle_mask()
    compressed = coco_mask.encode(np.asfortranarray(tri.astype(np.uint8)))
    flat = tri.T.ravel()  # COCO runs are column-major, starting with a run of zeros
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    counts = [0, *runs] if flat[0] else runs
    anns = [{"id": 1, "image_id": 1, "category_id": 2, "segmentation": {"size": [H, W], "counts": c}}
            for c in (compressed["counts"].decode(), counts)]
    label_set = read_labels(coco_layout(tmp_path, coco_doc(annotations=anns)))
    objs = label_set.images[0].objects
    assert len(objs) == 2
    for obj in objs:
        assert np.array_equal(obj.region((H, W)), tri)
        ys, xs = np.nonzero(tri)
        assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_yolo_data_yaml_layout_with_a_good_image(tmp_path):
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: scratch\n  1: crack\n")
    write_image(tmp_path / "images" / "train" / "part.png")
    write_image(tmp_path / "images" / "val" / "bg.png")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "part.txt").write_text(f"1 {15 / W} {10 / H} {10 / W} {10 / H}\n")
    label_set = read_labels(tmp_path)
    assert label_set.classes == ("scratch", "crack")
    by_name = {im.image.name: im for im in label_set.images}
    assert by_name["bg.png"].objects == ()
    (obj,) = by_name["part.png"].objects
    assert obj.cls == "crack" and np.allclose(obj.box, RECT)


# ---------------------------------------------------------------- bad labels: one line, file and line
@pytest.mark.parametrize("text, message", [
    ("0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.1 0.1\n", "2: class id 5 is out of range (0..1, classes.txt)"),
    ("0 12 5 3 3\n", "1: coordinate 12 is not normalised (0..1)"),
    ("0 0.05 0.5 0.2 0.2\n", "1: box (-3.2, 19.2, 9.6, 28.8) is outside the 64x48 image"),
    ("\n0 0.5 0.5 0 0.1\n", "2: box (32, 21.6, 32, 26.4) has zero area"),
    ("1 0.1 0.1\n", "1: polygon with fewer than 3 points (1)"),
    ("1 0.1 0.1 0.2 0.2 0.3\n", "1: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', got 6 values"),
    ("scratch 0.5 0.5 0.1 0.1\n", "1: class id 'scratch' is not an integer"),
    ("0 0.5 0.5 0.1 nan\n", "1: 'nan' is not a finite number"),
    ("0 0.5 0.5 0.1 x\n", "1: 'x' is not a number"),
])
def test_yolo_bad_labels(tmp_path, text, message):
    root = yolo_layout(tmp_path, text)
    with pytest.raises(DataError) as exc:
        read_labels(root)
    assert str(exc.value) == f"{root / 'part.txt'}:{message}"


def test_yolo_image_missing_unreadable_and_oversized_files(tmp_path):
    root = yolo_layout(tmp_path)
    (root / "lost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"^.*lost\.txt: image missing: no lost with an image suffix \(\.png .*\) in "):
        read_labels(root)
    (root / "lost.txt").unlink()
    (root / "part.txt").write_bytes(b"0 \xff\xfe")
    with pytest.raises(DataError) as exc:
        read_labels(root)
    assert str(exc.value) == f"{root / 'part.txt'}: cannot read label file: not UTF-8 text (byte 2)"
    os.truncate(root / "part.txt", L.MAX_LABEL_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(DataError) as exc:
        read_labels(root)
    assert str(exc.value) == f"{root / 'part.txt'}: label file of 64.0 MB refused (limit 64 MB)"


def test_more_objects_than_the_limit_are_refused_at_the_line_that_passes_it(tmp_path):
    root = yolo_layout(tmp_path, "0 0.5 0.5 0.1 0.1\n" * (L.MAX_OBJECTS + 1))
    with pytest.raises(DataError) as exc:
        read_labels(root)
    assert str(exc.value) == f"{root / 'part.txt'}:100001: more than 100000 objects for one image"


def test_every_format_counts_objects_against_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "MAX_OBJECTS", 1)
    path = coco_layout(tmp_path / "coco")
    with pytest.raises(DataError) as exc:
        read_labels(path)
    line = line_of(path, coco_doc()["annotations"][1])
    assert str(exc.value) == f"{path}:{line}: annotations[1]: more than 1 objects for image id 1"
    path = voc_layout(tmp_path / "voc")
    with pytest.raises(DataError) as exc:
        read_labels(path.parent.parent)
    assert str(exc.value) == f"{path}:9: object 2: more than 1 objects for one image"
    root = tmp_path / "mvtec"
    write_image(root / "test" / "crack" / "part.png")
    write_mask(root / "ground_truth" / "crack" / "part_mask.png", rect_mask() | triangle_mask())
    with pytest.raises(DataError) as exc:
        read_labels(root)
    assert str(exc.value) == (f"{root / 'ground_truth' / 'crack' / 'part_mask.png'}: 2 separate defect regions, "
                              "more than 1 for one image")


def bad_ann(**fields) -> dict:
    return {"id": 103, "image_id": 1, "category_id": 1, "bbox": [10, 5, 10, 10], **fields}


@pytest.mark.parametrize("ann, message", [
    (bad_ann(category_id=9), "unknown category id 9 (not in categories)"),
    (bad_ann(image_id=7), "unknown image id 7 (not in images)"),
    (bad_ann(bbox=[10, 5, 0, 10]), "box (10, 5, 10, 15) has zero area"),
    (bad_ann(bbox=[60, 5, 10, 10]), "box (60, 5, 70, 15) is outside the 64x48 image"),
    (bad_ann(bbox=[60, 5, 10]), "bbox must be [x, y, width, height] numbers, got [60, 5, 10]"),
    (bad_ann(segmentation=[[40, 10, 60, 10]]), "polygon with fewer than 3 points (2)"),
    (bad_ann(segmentation=[[40, 10, 60, 10, 50]]), "polygon has an odd number of coordinates (5)"),
    (bad_ann(segmentation=[[40, 10, 60, 10, 50, 49.5]]), "polygon point (50, 49.5) is outside the 64x48 image"),
    (bad_ann(segmentation={"size": [H, W], "counts": [5, 7]}),
     "RLE counts must be non-negative integers summing to 48 x 64 = 3072"),
    (bad_ann(segmentation={"size": [H, W], "counts": "PZ11"}),
     "RLE counts are corrupt (they do not cover the 64x48 image exactly)"),
    (bad_ann(segmentation={"size": [W, H], "counts": [3072]}),
     "RLE size [64, 48] is not the image's [height, width] [48, 64]"),
    (bad_ann(segmentation={"size": [H, W], "counts": [3072]}), "RLE mask is empty"),
])
def test_coco_bad_annotations_name_file_line_and_index(tmp_path, ann, message):
    doc = coco_doc()
    doc["annotations"].append(ann)
    path = coco_layout(tmp_path, doc)
    with pytest.raises(DataError) as exc:
        read_labels(path)
    assert str(exc.value) == f"{path}:{line_of(path, ann)}: annotations[2]: {message}"


def test_coco_bad_images_categories_and_json(tmp_path):
    doc = coco_doc()
    dup = {"id": 1, "file_name": "ok.png", "width": W, "height": H}
    doc["images"].append(dup)
    path = coco_layout(tmp_path, doc)
    with pytest.raises(DataError) as exc:
        read_labels(path)
    assert str(exc.value) == f"{path}:{line_of(path, dup)}: images[2]: duplicate image id 1"

    lost = {"id": 3, "file_name": "nope.png", "width": W, "height": H}
    path.write_text(coco_text(coco_doc(images=[*coco_doc()["images"], lost])))
    with pytest.raises(DataError) as exc:
        read_labels(path)
    assert str(exc.value) == (f"{path}:{line_of(path, lost)}: images[2]: image 'nope.png' is missing "
                              f"(looked in {tmp_path}, {tmp_path / 'images'})")

    cat = {"id": 1, "name": "dent"}
    path.write_text(coco_text(coco_doc(categories=[*coco_doc()["categories"], cat])))
    with pytest.raises(DataError) as exc:
        read_labels(path)
    assert str(exc.value) == f"{path}:{line_of(path, cat)}: categories[2]: duplicate category id 1"

    path.write_text('{"images": [\n  {"id": 1,}\n]}\n')
    with pytest.raises(DataError) as exc:
        read_labels(path)
    assert str(exc.value) == f"{path}:2: not valid JSON: Expecting property name enclosed in double quotes (column 12)"


def test_the_json_line_finder_skips_nested_arrays_and_follows_a_duplicate_key():
    text = ('{"info": {"a": [1, [2, "]"]]}, "annotations": [0],\n "annotations": [\n{"x": [[1], {"y": "}"}]},\n'
            '\n  {"id": 2}\n]}')
    assert json.loads(text)["annotations"][1] == {"id": 2}
    assert L._json_line(text, "annotations", 1) == 5
    assert L._json_line(text, "annotations", 0) == 3
    assert L._json_line(text, "annotations", 2) is None


def test_voc_bad_labels_name_the_element_line(tmp_path):
    bad = VOC_OBJECTS.replace("<xmax>60</xmax>", "<xmax>70</xmax>")
    path = voc_layout(tmp_path / "a", bad)
    with pytest.raises(DataError) as exc:
        read_labels(path.parent.parent)
    assert str(exc.value) == f"{path}:9: object 2 (crack): box (40, 10, 70, 40) is outside the 64x48 image"

    path = voc_layout(tmp_path / "b", VOC_OBJECTS.replace("<xmax>20</xmax>", "<xmax>9</xmax>"))
    with pytest.raises(DataError) as exc:
        read_labels(path.parent.parent)
    assert str(exc.value) == f"{path}:5: object 1 (scratch): box (10, 5, 9, 15) has zero area"

    path = voc_layout(tmp_path / "c", VOC_OBJECTS.replace("<ymin>11</ymin>", "<ymin>top</ymin>"))
    with pytest.raises(DataError) as exc:
        read_labels(path.parent.parent)
    assert str(exc.value) == f"{path}:12: <ymin> must be a number, got 'top'"

    path = voc_layout(tmp_path / "d", filename="nope.jpg")
    with pytest.raises(DataError) as exc:
        read_labels(path.parent.parent)
    assert str(exc.value) == (f"{path}:3: image missing: <filename> 'nope.jpg' not found in {path.parent}, "
                              f"{tmp_path / 'd' / 'JPEGImages'}")

    path = voc_layout(tmp_path / "e", VOC_OBJECTS.replace("</object>\n  <object>", "</object>\n  <object"))
    with pytest.raises(DataError) as exc:
        read_labels(path.parent.parent)
    assert str(exc.value) == f"{path}:10: not valid XML: not well-formed (invalid token)"


def test_voc_refuses_dtds_before_any_entity_is_expanded(tmp_path):
    laughs = ('<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
              ']>\n')
    path = voc_layout(tmp_path, VOC_OBJECTS.replace("<name>crack</name>", "<name>&lol2;</name>"), head=laughs)
    with pytest.raises(DataError) as exc:
        read_labels(path.parent.parent)
    assert str(exc.value) == f"{path}:2: DTD and entity declarations are refused in labels"


def test_masks_layout_bad_labels(tmp_path):
    root = masks_layout(tmp_path)
    (root / "ground_truth" / "crack" / "part_mask.png").unlink()
    with pytest.raises(DataError) as exc:
        read_labels(root)
    assert str(exc.value) == (f"{root / 'test' / 'crack' / 'part.png'}: its mask "
                              f"{root / 'ground_truth' / 'crack' / 'part_mask.png'} is missing")
    write_mask(root / "ground_truth" / "crack" / "part_mask.png", np.ones((H, W + 2), bool))
    with pytest.raises(DataError) as exc:
        read_labels(root)
    assert str(exc.value) == (f"mask {root / 'ground_truth' / 'crack' / 'part_mask.png'} is 66x48, image is "
                              "64x48: the image is not the size of its mask")


def test_format_detection_explicit_formats_and_class_mask_errors(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match=r"cannot tell the label format: expected a COCO \.json file"):
        read_labels(tmp_path)
    with pytest.raises(DataError, match=r"unknown label format 'labelme'"):
        read_labels(tmp_path, format="labelme")
    with pytest.raises(DataError, match=r"COCO labels are one \.json file, this is a folder"):
        read_labels(tmp_path, format="coco")
    with pytest.raises(DataError, match=r"no such file or folder"):
        read_labels(tmp_path / "nothing")
    image = read_labels(yolo_layout(tmp_path / "y")).images[1]
    with pytest.raises(DataError, match=r"class 'crack' is not among the classes \['scratch'\]"):
        class_mask(image, ["scratch"])


def test_coco_images_can_live_under_an_explicit_root(tmp_path):
    path = coco_layout(tmp_path / "a")
    (tmp_path / "a" / "images").rename(tmp_path / "pics")
    with pytest.raises(DataError, match=r"images\[0\]: image 'part.png' is missing"):
        read_labels(path)
    assert read_labels(path, image_root=tmp_path / "pics").images[0].image == tmp_path / "pics" / "part.png"


# ---------------------------------------------------------------- real images
def test_masks_reader_on_real_magnetic_tile_images(tmp_path):
    from linesight.export.images import read_image, read_mask

    root = make_subset(tmp_path / "mt", n_train=2, n_good=1, defects={"crack": 2, "blowhole": 1})
    label_set = read_labels(root)
    assert label_set.classes == ("blowhole", "crack")
    defective = [im for im in label_set.images if im.image.parent.name != "good"]
    assert len(defective) == 3 and len(label_set.images) == 6
    for im in defective:
        assert im.size == read_image(im.image).shape[:2]
        truth = read_mask(root / "ground_truth" / im.image.parent.name / f"{im.image.stem}_mask.png", im.size) > 0
        assert im.objects and all(o.cls == im.image.parent.name for o in im.objects)
        cm = class_mask(im, label_set.classes)
        assert np.array_equal(cm > 0, truth)  # components partition the mask exactly
        for o in im.objects:
            x0, y0, x1, y1 = map(int, o.box)
            region = o.region(im.size)
            assert region[y0:y1, x0:x1].sum() == region.sum() > 0  # the box holds its region
            assert region[y0, x0:x1].any() and region[y1 - 1, x0:x1].any()  # and is tight
            assert region[y0:y1, x0].any() and region[y0:y1, x1 - 1].any()
