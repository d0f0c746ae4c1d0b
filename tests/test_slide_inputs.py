"""Slides that are damaged, DICOM folders, and images with noisy metadata."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qpbridge.errors import InputError, SlideError
from qpbridge.predict.pipeline import expand_slides
from qpbridge.slide import open_slide


def test_a_truncated_svs_is_called_damaged(tmp_path: Path) -> None:
    from qpbridge.synth import write_synthetic_slide

    whole = tmp_path / "whole.svs"
    write_synthetic_slide(whole, width_px=1024, height_px=768, seed=1)
    data = whole.read_bytes()
    for keep in (0.5, 0.9):
        cut = tmp_path / f"cut{keep}.svs"
        cut.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(SlideError) as caught:
            open_slide(cut)
        message = str(caught.value)
        assert message.startswith(f"cannot open {cut}: OpenSlide cannot read it (")
        assert message.endswith("the file is damaged or incomplete (a copy cut short?): copy or export the slide "
                                "again")
        assert "convert" not in message


def test_a_dicom_folder_is_one_slide(tmp_path: Path) -> None:
    study = tmp_path / "study"
    dicom = study / "case1"
    dicom.mkdir(parents=True)
    for i in range(4):
        (dicom / f"level{i}.dcm").write_bytes(b"DICM")
    (study / "case2.svs").write_bytes(b"")
    assert expand_slides([study]) == [dicom, study / "case2.svs"]
    assert expand_slides([dicom]) == [dicom]
    with pytest.raises(SlideError, match=r"level0.dcm: OpenSlide cannot read it \(.*\): the file is damaged"):
        open_slide(dicom)  # opened through its first file: junk here
    with pytest.raises(InputError, match=r"is a folder, not a slide: give a slide file \(a DICOM slide is a folder"):
        open_slide(study)


def test_corrupt_exif_does_not_leak_a_warning(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 80, 3), 180, np.uint8)).save(buffer, "JPEG")
    payload = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(20)  # an IFD that claims 65,535 entries
    data = buffer.getvalue()
    path = tmp_path / "photo.jpg"
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(path, mpp=1.0) as slide:
            assert slide.dimensions == (80, 64)
            assert slide.read_region_at(0, 0, 8, 8, 1.0).shape == (8, 8, 3)
    assert not [str(w.message) for w in caught if "EXIF" in str(w.message)]
