"""Raw and compressed image decoding: round trips over every encoding, odd widths, padded rows, byte orders; errors."""

import array
import itertools

import numpy as np
import pytest

from mobilegeo_ros.io.images import (
    SUPPORTED_ENCODINGS, ImageDecodeError, bytes_per_pixel, decode_compressed, decode_image, encode_compressed,
    encode_image,
)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _luma(rgb):
    y = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return np.repeat(np.clip(y, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.mark.parametrize("encoding,width,pad,big", list(itertools.product(
    SUPPORTED_ENCODINGS, [1, 7, 33], [0, 3, 64], [False, True])))
def test_round_trip_grid(encoding, width, pad, big):
    rgb = _rgb(5, width, seed=width + pad)
    bpp = bytes_per_pixel(encoding)
    fields = encode_image(rgb, encoding, step=width * bpp + pad, is_bigendian=big)
    assert fields["step"] == width * bpp + pad and len(fields["data"]) == fields["step"] * 5
    out = decode_image(**fields)
    assert out.shape == (5, width, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    expected = _luma(rgb) if encoding in ("mono8", "8UC1", "mono16", "16UC1") else rgb
    np.testing.assert_array_equal(out, expected)


def test_channel_order_by_hand():
    # one red pixel in each layout
    assert decode_image(1, 1, "rgb8", 0, 3, bytes([255, 0, 0])).tolist() == [[[255, 0, 0]]]
    assert decode_image(1, 1, "bgr8", 0, 3, bytes([0, 0, 255])).tolist() == [[[255, 0, 0]]]
    assert decode_image(1, 1, "bgra8", 0, 4, bytes([0, 0, 255, 7])).tolist() == [[[255, 0, 0]]]
    assert decode_image(1, 1, "rgba8", 0, 4, bytes([255, 0, 0, 7])).tolist() == [[[255, 0, 0]]]


def test_mono16_byte_order_and_scaling():
    # 0x1234 = 4660 -> round(4660/257) = 18; 0xFFFF -> 255; 0x0080 -> 0 (128/257 rounds down)
    little = bytes([0x34, 0x12, 0xFF, 0xFF, 0x80, 0x00])
    big = bytes([0x12, 0x34, 0xFF, 0xFF, 0x00, 0x80])
    for data, be in ((little, 0), (big, 1)):
        out = decode_image(1, 3, "mono16", be, 6, data)
        assert out[0, :, 0].tolist() == [18, 255, 0]
    # the wrong byte order gives a different picture, so the flag is really used
    assert decode_image(1, 3, "mono16", 0, 6, big)[0, :, 0].tolist() != [18, 255, 0]


def test_accepts_ros_data_containers():
    rgb = _rgb(3, 4)
    f = encode_image(rgb, "rgb8")
    for data in (f["data"], bytearray(f["data"]), memoryview(f["data"]), array.array("B", f["data"]),
                 list(f["data"]), np.frombuffer(f["data"], np.uint8)):
        np.testing.assert_array_equal(decode_image(3, 4, "rgb8", 0, 12, data), rgb)


@pytest.mark.parametrize("kwargs,match", [
    (dict(encoding="32FC1"), "encoding: '32FC1' is not supported"),
    (dict(encoding="yuv422"), "not supported"),
    (dict(step=11), "step: 11 bytes is smaller than width"),
    (dict(data=bytes(12 * 3 - 1)), "data: 35 bytes but step\\*height"),
    (dict(data=bytes(12 * 3 + 1)), "data: 37 bytes"),
    (dict(height=0, data=b""), "zero-size"),
    (dict(width=0, step=0, data=b""), "zero-size"),
    (dict(max_pixels=11), "exceeds the limit of 11 pixels"),
])
def test_raw_errors(kwargs, match):
    args = dict(height=3, width=4, encoding="rgb8", is_bigendian=0, step=12, data=bytes(36))
    args.update(kwargs)
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(**args)


def test_huge_declared_size_refused_before_reading_data():
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(100000, 100000, "rgb8", 0, 300000, b"")


def _smooth(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)], 2).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
@pytest.mark.parametrize("width", [31, 64])
def test_compressed_round_trip(fmt, width):
    rgb = _smooth(24, width)
    f = encode_compressed(rgb, fmt, quality=95)
    out = decode_compressed(f["format"], f["data"])
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if fmt == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        # channel order must survive: the red ramp goes left to right, the green one top to bottom
        assert np.abs(out.astype(int) - rgb).mean() < 4
    # ROS image_transport style format strings work too
    out2 = decode_compressed(f"rgb8; {f['format']} compressed bgr8", array.array("B", f["data"]))
    np.testing.assert_array_equal(out2, out)


def test_compressed_errors():
    jpeg = encode_compressed(_smooth(40, 40), "jpeg")["data"]
    png = encode_compressed(_smooth(40, 40), "png")["data"]
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_compressed("jpeg", jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="neither a JPEG nor a PNG"):
        decode_compressed("jpeg", b"this is not an image at all")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_compressed("jpeg", b"")
    with pytest.raises(ImageDecodeError, match="does not match the data, which is PNG"):
        decode_compressed("jpeg", png)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 100 pixels"):
        decode_compressed("png", png, max_pixels=100)
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_compressed("jpeg", jpeg, max_pixels=100)
    # scrambled entropy-coded data with intact headers and end marker
    bad = bytearray(jpeg)
    sos = bad.find(b"\xff\xda")
    bad[sos + 2: sos + 4] = b"\xff\xff"  # impossible scan header length
    with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
        decode_compressed("jpeg", bytes(bad))


def test_png_bomb_header_refused_before_decoding():
    png = bytearray(encode_compressed(_smooth(8, 8), "png")["data"])
    png[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")
    with pytest.raises(ImageDecodeError, match="60000x60000"):
        decode_compressed("png", bytes(png))


def test_read_image_file_png_bmp_and_one_line_errors(tmp_path):
    import cv2

    from mobilegeo_ros.io.images import read_image_file

    rgb = np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8)
    for name in ("v.png", "v.bmp"):
        cv2.imwrite(str(tmp_path / name), rgb[:, :, ::-1])
        np.testing.assert_array_equal(read_image_file(tmp_path / name), rgb)
    jpeg = encode_compressed(rgb, "jpeg")["data"]
    (tmp_path / "cut.jpg").write_bytes(bytes(jpeg)[:-10])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg.*truncated"):
        read_image_file(tmp_path / "cut.jpg")
    with pytest.raises(ImageDecodeError, match="missing.png.*does not exist"):
        read_image_file(tmp_path / "missing.png")
    (tmp_path / "text.tif").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="text.tif.*not a readable image"):
        read_image_file(tmp_path / "text.tif")
