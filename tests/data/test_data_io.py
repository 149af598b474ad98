import numpy as np
import pytest
from PIL import Image

from amlight.data.io import DataFileError, check_pair, load_image, load_labels
from amlight.data.registry import DatasetMetadata

# Asymmetric under an R<->B swap, except for the one colour that has its BGR twin in the palette.
META = DatasetMetadata(
    "toy",
    ("sky", "tree", "road", "car"),
    ((70, 130, 180), (107, 142, 35), (128, 64, 128), (0, 0, 142)),
    ignore_index=255,
)
LABELS = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [0, 1, 2, 3]])


def save(array, path):
    Image.fromarray(np.asarray(array)).save(path)
    return path


# --- images ---


def test_missing_image_names_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(DataFileError, match="does not exist") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_png_fails_with_file_name(tmp_path):
    rng = np.random.default_rng(0)
    path = save(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), tmp_path / "noise.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="corrupt or truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.kind == "unreadable file"


def test_garbage_file_fails_with_file_name(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"this is not an image")
    with pytest.raises(DataFileError, match="fake.jpg"):
        load_image(path)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P"])
def test_image_modes_load_as_rgb_uint8(tmp_path, mode):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = np.arange(7) * 30
    rgb[..., 1] = 100
    img = Image.fromarray(rgb)
    if mode == "P":
        img = img.quantize(colors=16)
    else:
        img = img.convert(mode)
    path = tmp_path / f"{mode}.png"
    img.save(path)
    out = load_image(path)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    expected = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(out, expected)
    if mode in ("L", "LA"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_drops_alpha_keeps_colour(tmp_path):
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red must stay red, not black
    path = save(rgba, tmp_path / "a.png")
    out = load_image(path)
    assert out.shape == (3, 3, 3)
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_16bit_image_is_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 65535, 0]], np.uint16)
    path = save(values, tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 128], [255, 255, 0]])


def test_jpeg_loads(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(path, quality=95)
    out = load_image(path)
    assert out.shape == (8, 8, 3) and abs(int(out.mean()) - 120) <= 2


# --- labels: index ---


def test_index_labels_from_grayscale(tmp_path):
    raw = LABELS.astype(np.uint8)
    raw[0, 0] = 255
    out = load_labels(save(raw, tmp_path / "l.png"), META)
    assert out.dtype == np.int64 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, raw)


def test_p_mode_labels_use_raw_indices_not_palette_colours(tmp_path):
    img = Image.fromarray(LABELS.astype(np.uint8), mode="L").convert("P")
    # A palette whose colours are unrelated to the classes, as in VOC-style label files.
    img.putpalette([255, 255, 255, 10, 20, 30, 1, 2, 3, 9, 9, 9] + [0] * (256 * 3 - 12))
    path = tmp_path / "p.png"
    img.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(load_labels(path, META), LABELS)
    np.testing.assert_array_equal(load_labels(path, META, label_format="index"), LABELS)


def test_16bit_index_labels(tmp_path):
    path = save(LABELS.astype(np.uint16), tmp_path / "i16.png")
    np.testing.assert_array_equal(load_labels(path, META, label_format="index"), LABELS)


def test_out_of_range_index_names_file_values_and_location(tmp_path):
    raw = LABELS.astype(np.uint8)
    raw[2, 1] = 7
    path = save(raw, tmp_path / "bad.png")
    with pytest.raises(DataFileError) as info:
        load_labels(path, META)
    message = str(info.value)
    assert str(path) in message
    assert "7 (1 px" in message and "(2, 1)" in message
    out = load_labels(path, META, unknown_colors="ignore")
    assert out[2, 1] == 255 and (out[raw != 7] == raw[raw != 7]).all()


def test_one_based_labels_get_a_hint(tmp_path):
    path = save((LABELS + 1).astype(np.uint8), tmp_path / "one.png")
    with pytest.raises(DataFileError, match="1-based"):
        load_labels(path, META)


def test_id_map_maps_raw_ids_and_unmapped_become_ignore(tmp_path):
    raw = np.array([[7, 26, 0], [33, 5, 7]], np.uint8)
    path = save(raw, tmp_path / "ids.png")
    out = load_labels(path, META, id_map={7: 0, 26: 3, 33: 1})
    np.testing.assert_array_equal(out, [[0, 3, 255], [1, 255, 0]])
    table = np.full(30, 255)
    table[[7, 26]] = [0, 3]  # array form; 33 lies beyond its end, so it becomes ignore too
    np.testing.assert_array_equal(load_labels(path, META, id_map=table), [[0, 3, 255], [255, 255, 0]])
    with pytest.raises(DataFileError, match="9"):
        load_labels(path, META, id_map=np.full(34, 9))  # a map into a non-class is caught as well


# --- labels: colour ---


def test_colour_labels_map_through_palette(tmp_path):
    path = save(META.colorize(LABELS), tmp_path / "c.png")
    out = load_labels(path, META)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, LABELS)
    np.testing.assert_array_equal(load_labels(path, META, label_format="color"), LABELS)


def test_rgba_colour_labels(tmp_path):
    rgba = np.concatenate([META.colorize(LABELS), np.full((3, 4, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_labels(save(rgba, tmp_path / "c.png"), META), LABELS)


def test_colour_outside_palette_names_file_colour_count_and_location(tmp_path):
    rgb = META.colorize(LABELS)
    rgb[1, 3] = (12, 34, 56)
    rgb[2, 0] = (12, 34, 56)
    rgb[0, 2] = (1, 1, 2)
    path = save(rgb, tmp_path / "off.png")
    with pytest.raises(DataFileError) as info:
        load_labels(path, META)
    message = str(info.value)
    assert str(path) in message
    assert "(12, 34, 56) (2 px" in message and "(1, 3)" in message
    assert "(1, 1, 2) (1 px" in message and "(0, 2)" in message
    assert "BGR" not in message
    assert info.value.kind == "unknown colours"


def test_bgr_swapped_file_gets_hint(tmp_path):
    path = save(META.colorize(LABELS)[..., ::-1].copy(), tmp_path / "bgr.png")
    with pytest.raises(DataFileError, match="BGR-swapped") as info:
        load_labels(path, META)
    assert str(path) in str(info.value)


def test_unknown_colours_ignore_maps_to_ignore_index(tmp_path):
    rgb = META.colorize(LABELS)
    rgb[0, 1] = (250, 250, 250)
    out = load_labels(save(rgb, tmp_path / "x.png"), META, unknown_colors="ignore")
    expected = LABELS.copy()
    expected[0, 1] = 255
    np.testing.assert_array_equal(out, expected)


def test_ignore_colours_are_not_errors(tmp_path):
    rgb = META.colorize(LABELS)
    rgb[0, 0] = (0, 0, 0)
    out = load_labels(save(rgb, tmp_path / "x.png"), META, ignore_colors=[(0, 0, 0)])
    assert out[0, 0] == 255 and out[0, 1] == 0


def test_grey_rgb_is_read_as_index(tmp_path):
    grey = np.repeat(LABELS.astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_labels(save(grey, tmp_path / "g.png"), META), LABELS)


def test_grey_palette_colours_still_read_as_colour(tmp_path):
    meta = DatasetMetadata("grey", ("building", "pole"), ((70, 70, 70), (153, 153, 153)))
    labels = np.array([[0, 1], [1, 0]])
    np.testing.assert_array_equal(load_labels(save(meta.colorize(labels), tmp_path / "g.png"), meta), labels)


def test_index_format_reads_a_colour_file_in_the_palette_and_rejects_one_off_it(tmp_path):
    # An RGB file with colours cannot be an index map: with only palette colours it is a colour label
    # (issue 13: colour PNGs with the synthetic palette were rejected); with others it stays an error.
    path = save(META.colorize(LABELS), tmp_path / "c.png")
    np.testing.assert_array_equal(load_labels(path, META, label_format="index"), LABELS)
    off = META.colorize(LABELS)
    off[0, 0] = (1, 2, 3)
    with pytest.raises(DataFileError, match="colour image whose colours are not all in the palette"):
        load_labels(save(off, tmp_path / "off.png"), META, label_format="index")


def test_colour_mapping_is_exact_on_a_large_random_map(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (300, 400))
    out = load_labels(save(META.colorize(labels), tmp_path / "big.png"), META)
    np.testing.assert_array_equal(out, labels)


def test_missing_label_file(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        load_labels(tmp_path / "missing.png", META)


# --- pairs ---


def test_check_pair_names_both_files_and_sizes():
    image = np.zeros((4, 6, 3), np.uint8)
    labels = np.zeros((4, 5), np.int64)
    with pytest.raises(DataFileError) as info:
        check_pair(image, labels, "imgs/a.jpg", "labels/a.png")
    message = str(info.value)
    assert "imgs/a.jpg" in message and "labels/a.png" in message
    assert "6x4" in message and "5x4" in message
    check_pair(image, np.zeros((4, 6), np.int64), "a", "b")  # same size: no error
