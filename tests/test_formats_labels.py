"""Label images: instance and class labels -> features -> label image, pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from PIL import Image
from shapely import box

from qpbridge.errors import FormatError, InputError
from qpbridge.formats.labels import (
    INSTANCE_ID,
    label_affine,
    labels_to_features,
    load_label_image,
    rasterize_labels,
    read_label_image,
    write_label_image,
)
from qpbridge.qupath import Feature
from tests.test_formats_common import shared_data


def instances() -> np.ndarray:
    """Touching instances, an instance with a hole holding another, one split at a corner, large ids."""
    img = np.zeros((40, 50), np.uint16)
    img[2:12, 2:12] = 5                 # ring ...
    img[5:9, 5:9] = 300                 # ... around instance 300
    img[2:12, 12:20] = 7                # touches 5 along an edge
    img[20:22, 20:22] = 65535           # two squares of one id meeting at a corner: one MultiPolygon
    img[22:24, 22:24] = 65535
    img[30:38, 30:48] = 1
    img[30:38, 40] = 0                  # a one-pixel slit
    img[0, 0] = 2                       # a single pixel in the corner
    return img


def test_instances_round_trip_pixel_exact() -> None:
    img = instances()
    result = labels_to_features(img)
    ids = [f.measurements[INSTANCE_ID] for f in result.features]
    assert ids == [1.0, 2.0, 5.0, 7.0, 300.0, 65535.0]
    by_id = {int(f.measurements[INSTANCE_ID]): f for f in result.features}
    assert by_id[5].geometry.area == 100 - 16 and len(by_id[5].geometry.interiors) == 1
    assert by_id[65535].geometry.geom_type == "MultiPolygon" and by_id[65535].geometry.area == 8
    assert by_id[1].geometry.geom_type == "MultiPolygon"  # the slit cuts it in two
    assert by_id[2].geometry.equals(box(0, 0, 1, 1))
    assert {f.object_type for f in result.features} == {"detection"}
    assert result.summary.total == 6 and result.summary.by_class == {"Unclassified": 6}
    back, summary = rasterize_labels(result.features, img.shape)
    assert back.dtype == np.uint16 and summary.written == 6
    np.testing.assert_array_equal(back, img)


def test_instances_round_trip_through_files_with_an_affine(tmp_path: Path) -> None:
    img = instances()
    for suffix in (".png", ".tif"):
        src = tmp_path / f"labels{suffix}"
        if suffix == ".png":
            Image.fromarray(img).save(src)
        else:
            import tifffile

            tifffile.imwrite(src, img)
        # the label image is at 2 um/px over a 0.5 um/px slide, its corner at level-0 (1000, 2000)
        result = read_label_image(src, mpp=2.0, slide_mpp=0.5, offset_px=(1000, 2000), class_name="Nucleus")
        assert result.mpp == 0.5
        by_id = {int(f.measurements[INSTANCE_ID]): f for f in result.features}
        assert by_id[2].geometry.equals(box(1000, 2000, 1004, 2004))
        assert {f.class_name for f in result.features} == {"Nucleus"}
        out = tmp_path / f"back{suffix}"
        write_label_image(out, result.features, img.shape, label_affine(mpp=2.0, slide_mpp=0.5,
                                                                        offset_px=(1000, 2000)))
        again, _ = load_label_image(out)
        assert again.dtype == np.uint16
        np.testing.assert_array_equal(again, img)


def test_writer_numbers_instances_in_order_without_ids(tmp_path: Path) -> None:
    feats = [Feature(box(0, 0, 2, 2)), Feature(box(1, 1, 3, 3)), Feature(shapely.Point(0, 0)),
             Feature(shapely.Polygon())]
    img, summary = rasterize_labels(feats, (3, 3))
    assert img.tolist() == [[1, 1, 0], [1, 2, 2], [0, 2, 2]]       # later features win where they overlap
    assert summary.written == 2 and summary.skipped == {"not an area (point, line or empty)": 2}
    big = [Feature(box(0, 0, 1, 1), measurements={INSTANCE_ID: 70000.0})]
    img, _ = rasterize_labels(big, (2, 2))
    assert img.dtype == np.uint32 and int(img[0, 0]) == 70000
    with pytest.raises(InputError, match=r"70000 instances do not fit a 16-bit PNG: write a \.tif"):
        write_label_image(tmp_path / "big.png", big, (2, 2))
    write_label_image(tmp_path / "big.tif", big, (2, 2))
    assert int(load_label_image(tmp_path / "big.tif")[0][0, 0]) == 70000
    with pytest.raises(InputError, match=r"label images are written as \.png, \.tif, \.tiff \(lossless\), not '\.jpg'"):
        write_label_image(tmp_path / "x.jpg", big, (2, 2))
    assert not list(tmp_path.glob(".*.tmp"))


def test_class_labels_round_trip_and_class_map(tmp_path: Path) -> None:
    img = np.zeros((20, 30), np.uint8)
    img[2:10, 2:10] = 1
    img[4:6, 4:6] = 2          # stroma inside tumour
    img[12:18, 2:28] = 1       # a second tumour region
    img[15, 5] = 3
    names = {1: "Tumor", 2: "Stroma", 3: "Necrosis"}
    result = labels_to_features(img, kind="class", class_map=names)
    assert [(f.class_name, f.geometry.geom_type, f.object_type) for f in result.features] == [
        ("Tumor", "MultiPolygon", "annotation"), ("Stroma", "Polygon", "annotation"),
        ("Necrosis", "Polygon", "annotation")]
    back, _ = rasterize_labels(result.features, img.shape, kind="class", class_map={v: k for k, v in names.items()})
    np.testing.assert_array_equal(back, img)
    split = labels_to_features(img, kind="class", class_map=names, split_regions=True)
    assert [f.class_name for f in split.features] == ["Tumor", "Tumor", "Stroma", "Necrosis"]
    assert all(f.geometry.geom_type == "Polygon" for f in split.features)
    # without a class map, classes are named by their numbers, and written back by them
    plain = labels_to_features(img, kind="class")
    assert [f.class_name for f in plain.features] == ["1", "2", "3"]
    out = tmp_path / "classes.png"
    write_label_image(out, plain.features, img.shape, kind="class", mpp=0.5)
    again, mpp = load_label_image(out)
    assert again.dtype == np.uint8 and mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(again, img)
    with pytest.raises(FormatError) as err:
        labels_to_features(img, kind="class", class_map={1: "Tumor"}, source="m.png")
    assert str(err.value) == (
        "m.png: labels not in the class map: 2 (4 px), 3 (1 px): add them (e.g. {2: 'Stroma'}), map them to None "
        "to leave them out, or give on_unknown='keep'"
    )
    dropped = labels_to_features(img, kind="class", class_map={1: "Tumor", 2: None, 3: None})
    assert [f.class_name for f in dropped.features] == ["Tumor"]
    kept = labels_to_features(img, kind="class", class_map={1: "Tumor"}, on_unknown="keep")
    assert [f.class_name for f in kept.features] == ["Tumor", "2", "3"]
    with pytest.raises(InputError, match=r"classes without a label: 'Stroma' \(1\): give class_map="):
        rasterize_labels(result.features, img.shape, kind="class", class_map={"Tumor": 1, "Necrosis": 3})
    with pytest.raises(InputError, match="class_map applies to class labels"):
        labels_to_features(img, class_map=names)


def test_pixel_size_is_needed_only_when_placing_by_pixel_size(tmp_path: Path) -> None:
    src = tmp_path / "m.png"
    Image.fromarray(instances()).save(src)
    with pytest.raises(FormatError) as err:
        read_label_image(src, slide_mpp=0.25)
    assert str(err.value) == (
        f"{src}: label image without a pixel size (no resolution in the file) and slide_mpp=0.25 was given: give "
        "the label image's um/px (mpp=...) or an affine"
    )
    with pytest.raises(InputError, match=r"mpp=2\.0 places the label image only with slide_mpp"):
        read_label_image(src, mpp=2.0)
    with pytest.raises(InputError, match="give either affine, or mpp / slide_mpp / offset_px, not both"):
        read_label_image(src, affine=Affine.scale(2), mpp=1.0)
    assert read_label_image(src).mpp is None                      # at level 0, size unknown: fine
    with_res = tmp_path / "res.png"
    Image.fromarray(instances()).save(with_res, dpi=(25400 / 2.0, 25400 / 2.0))   # 2 um/px recorded
    r = read_label_image(with_res, slide_mpp=0.5)
    by_id = {int(f.measurements[INSTANCE_ID]): f for f in r.features}
    assert by_id[2].geometry.equals(box(0, 0, 4, 4)) and r.mpp == 0.5
    default_dpi = tmp_path / "72dpi.png"
    Image.fromarray(instances()).save(default_dpi, dpi=(72, 72))     # 353 um/px: a default, not a pixel size
    assert load_label_image(default_dpi)[1] is None
    with pytest.raises(InputError, match="mpp must be a positive number of um/px, got -1"):
        label_affine(mpp=-1, slide_mpp=0.5)


def test_jpeg_masks_and_colour_images(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 20:50] = 255
    jpg = tmp_path / "tumour.jpg"
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(jpg, quality=75)
    noisy, _ = load_label_image(jpg, threshold=127)
    assert noisy.dtype == np.uint8 and set(np.unique(noisy).tolist()) == {0, 1}
    assert abs(int(noisy.sum()) - 900) < 30
    result = read_label_image(jpg, kind="class", threshold=127, class_map={1: "Tumor"})
    back, _ = rasterize_labels(result.features, noisy.shape, kind="class", class_map={"Tumor": 1})
    np.testing.assert_array_equal(back, noisy)
    colour = tmp_path / "colour.png"
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(colour)
    with pytest.raises(FormatError) as err:
        load_label_image(colour)
    assert str(err.value) == (
        f"{colour}: a colour image (3 channels), not a label image: give a single-channel image of labels, or "
        "threshold=127 for a black-and-white mask"
    )
    grey = tmp_path / "grey.png"
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(grey)    # RGB with equal channels: its labels are fine
    assert np.array_equal(load_label_image(grey)[0], mask)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(FormatError, match=r"junk\.png: not a readable image .*: give a PNG or TIFF label image"):
        load_label_image(junk)


def _monuseg_instances() -> list[Path]:
    return sorted(shared_data("monuseg-train", "instances").glob("*_instances.png"))


@pytest.mark.slow
def test_monuseg_instances_round_trip_pixel_exact() -> None:
    paths = _monuseg_instances()
    assert len(paths) == 30
    total = 0
    for path in paths:
        img, _ = load_label_image(path)
        result = read_label_image(path)
        n_ids = len(np.unique(img)) - 1
        assert len(result.features) == n_ids
        back, _ = rasterize_labels(result.features, img.shape)
        np.testing.assert_array_equal(back, img, err_msg=str(path))
        total += n_ids
    assert total == 16_959  # ids 1..N in every tile (the data README says 16,958)


def test_bcss_tumour_mask_round_trip() -> None:
    path = shared_data("bcss-tumor", "masks", "1015.jpg")
    mask, _ = load_label_image(path, threshold=127)
    assert mask.shape == (2048, 4096)
    result = read_label_image(path, kind="class", threshold=127, class_map={1: "Tumor"})
    assert [f.class_name for f in result.features] == ["Tumor"]
    assert result.features[0].geometry.area == int(mask.sum())
    back, _ = rasterize_labels(result.features, mask.shape, kind="class", class_map={"Tumor": 1})
    np.testing.assert_array_equal(back, mask)
