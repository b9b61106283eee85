import numpy as np
import pytest
from PIL import Image

from featcache.errors import FeatcacheError
from featcache.images import check_files_present, load_rgb


def _rgb(path):
    return np.asarray(load_rgb(path))


def test_modes_load_as_rgb(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    out = _rgb(tmp_path / "l.png")
    assert out.shape == (8, 16, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()

    la = np.stack([gray, np.full_like(gray, 255)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (_rgb(tmp_path / "la.png")[..., 1] == gray).all()

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top opaque red, bottom transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = _rgb(tmp_path / "rgba.png")
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[3, 3]) == (255, 255, 255)

    palette = Image.fromarray(np.full((4, 4, 3), (10, 120, 230), dtype=np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "p.png")
    assert tuple(_rgb(tmp_path / "p.png")[0, 0]) == (10, 120, 230)

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    r, g, b = _rgb(tmp_path / "cmyk.jpg")[1, 1].astype(int)
    assert r > 200 and g < 60 and b < 60

    sixteen = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(sixteen).save(tmp_path / "i16.png")
    out = _rgb(tmp_path / "i16.png")
    assert out[0, 0, 0] == 0 and out[3, 3, 0] == 255 and out[1, 3, 1] == 119  # 7*4369/257, not clipped to 255


def test_truncated_and_garbage_images_are_errors(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for name in ("cut.jpg", "junk.png"):
        with pytest.raises(FeatcacheError, match=f"{name}: cannot decode image"):
            load_rgb(tmp_path / name)


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(FeatcacheError, match="big.png: 300x300 pixels exceeds the limit of 1000"):
        load_rgb(tmp_path / "big.png", max_pixels=1000)


def test_missing_and_empty_files_are_counted(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (2, 2)).save(tmp_path / "ok.png")
    with pytest.raises(FeatcacheError, match=r"2 of 3 image files are missing or empty .*: empty.jpg, gone.jpg"):
        check_files_present(tmp_path, ["empty.jpg", "ok.png", "gone.jpg"])


def test_an_image_the_resize_would_blow_up_is_refused_before_decoding(tmp_path):
    """12000x1 pixels are within any limit, but resizing the shorter side to 256 makes 3072000x256 before the
    centre crop: 3.9 GB in one worker. Refused with one line on the Pillow and the JPEG-bytes paths alike."""
    from featcache.images import read_jpeg_bytes

    Image.new("RGB", (12000, 1)).save(tmp_path / "wide.png")
    Image.new("RGB", (1, 12000)).save(tmp_path / "tall.jpg")
    with pytest.raises(FeatcacheError, match=r"wide\.png: 12000x1 pixels would be resized to 3072000x256 before the "
                                             r"crop, over the limit of 100000000 pixels \(aspect ratio 12000:1\)"):
        load_rgb(tmp_path / "wide.png", resize=256)
    with pytest.raises(FeatcacheError, match=r"tall\.jpg: 1x12000 pixels would be resized to 256x3072000"):
        load_rgb(tmp_path / "tall.jpg", resize=(256,))
    assert read_jpeg_bytes(tmp_path / "tall.jpg", resize=256) is None  # left to load_rgb, which says why
    assert read_jpeg_bytes(tmp_path / "tall.jpg") is not None
    assert load_rgb(tmp_path / "wide.png").size == (12000, 1)  # no resize given: nothing to check
    assert load_rgb(tmp_path / "wide.png", max_pixels=10**9, resize=256).size == (12000, 1)  # a raised limit


def test_an_error_line_names_twenty_items_then_counts_the_rest():
    from featcache.errors import named

    assert named(["a", "b"]) == "a, b"
    many = [f"{k}.jpg" for k in range(25)]
    assert named(many, "; ") == "; ".join(many[:20]) + "; and 5 more"
