"""Image files as users have them: truncated or corrupt PNGs, 16- and 32-bit greyscale, decompression bombs,
symbolic-link loops, every PIL colour mode. Each comes out as an RGB (or L) uint8 image at the model's size, is
skipped and counted when the folder is indexed, or stops the command with one line naming the file."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.data.datasets import ImageFolderDataset, iterate_batches
from vitkit.data.preprocess import Preprocess, open_image
from vitkit.errors import UserError


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG written chunk by chunk (PIL cannot write 16-bit RGB, nor a header without its pixels)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def folder(root: Path, files: dict[str, bytes | Image.Image]) -> Path:
    """root/train/<class>/<name> for each "class/name" key."""
    for key, content in files.items():
        path = root / "train" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path)
    return root


# ---------------------------------------------------------------------------------------- corrupt files


def test_truncated_png_is_skipped_at_indexing_and_counted(tmp_path):
    whole = png_bytes(noise(48, 48, seed=1))
    no_end = whole[: -len(chunk(b"IEND", b""))]  # every pixel there, only the end chunk lost: decodes, kept
    folder(tmp_path, {"a/0.png": noise(40, 40), "a/1.png": noise(40, 40, 2), "b/0.png": noise(40, 40, 3),
                      "b/truncated.png": whole[: len(whole) // 2], "b/no-end.png": no_end})
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\).*truncated\.png \(corrupt or truncated image"):
        d = ImageFolderDataset(tmp_path, "train", image_size=16, channels=3)
    assert [Path(p).name for p, _ in d.skipped] == ["truncated.png"]
    assert [Path(p).name for p in d.paths] == ["0.png", "1.png", "0.png", "no-end.png"]
    x, y = d.get_batch(torch.arange(4))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    with Image.open(tmp_path / "train" / "b" / "no-end.png") as im:
        assert np.array_equal(x[3].permute(1, 2, 0).numpy(), d.preprocess.to_array(im))


def test_train_with_workers_skips_a_truncated_png(tmp_path, capsys):
    files = {f"{c}/{i}.png": noise(24, 24, seed=10 * k + i) for k, c in enumerate("ab") for i in range(4)}
    whole = png_bytes(noise(24, 24, seed=99))
    files["a/truncated.png"] = whole[: len(whole) - 40]
    folder(tmp_path / "photos", files)
    for c in "ab":
        (tmp_path / "photos" / "val" / c).mkdir(parents=True)
        noise(24, 24, seed=50 + ord(c)).save(tmp_path / "photos" / "val" / c / "0.png")
    rc = main(["train", "--model", "ViT-testing/4", "--dataset", f"imagefolder:{tmp_path / 'photos'}",
               "--image-size", "16", "--steps", "2", "--batch-size", "4", "--workers", "2", "--precision",
               "fp32", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    # the CLI prints vitkit's own warnings as one line each (cli.main), once per split indexed
    assert re.search(r"^vitkit: warning: imagefolder .*/train: skipped 1 file\(s\).*truncated\.png", err, re.M), err
    assert (tmp_path / "run" / "checkpoint").is_dir()


def _png_with_bad_pixels() -> bytes:
    """Chunks and CRCs intact (passes PIL's verify), but the compressed pixel data is cut short."""
    pixels = b"".join(b"\0" + bytes(range(3 * 16)) for _ in range(16))  # 16x16 RGB, filter 0 per row
    return raw_png(16, 16, 8, 2, zlib.compress(pixels)[:30])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_fails_to_decode_later_is_one_line_naming_it(tmp_path, workers):
    folder(tmp_path, {"a/0.png": noise(16, 16), "b/0.png": noise(16, 16, 1)})
    d = ImageFolderDataset(tmp_path, "train", image_size=16, channels=3)
    (tmp_path / "train" / "b" / "0.png").write_bytes(_png_with_bad_pixels())  # changed after indexing
    with pytest.raises(UserError) as e:
        list(iterate_batches(d, torch.arange(2), 2, num_workers=workers))
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg and "DataLoader" not in msg
    assert msg.startswith(f"imagefolder: cannot decode {tmp_path / 'train' / 'b' / '0.png'} (")
    assert msg.endswith("; remove or replace the file")


def test_decompression_bomb_is_one_line_in_predict_and_skipped_in_folders(tmp_path, capsys):
    bomb = raw_png(20000, 20000, 8, 0, zlib.compress(b"\0" * 20001 * 4))  # a header only PIL has to believe
    (tmp_path / "huge.png").write_bytes(bomb)
    with pytest.raises(UserError, match=r"^image .*huge\.png is too large to decode safely \(.*400000000 pixels"):
        open_image(tmp_path / "huge.png")
    assert main(["predict", str(tmp_path / "no-checkpoint"), str(tmp_path / "huge.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vitkit: error: image ") and "huge.png is too large" in err
    folder(tmp_path / "f", {"a/0.png": noise(8, 8), "b/0.png": noise(8, 8, 1), "b/huge.png": bomb})
    with pytest.warns(UserWarning, match=r"skipped 1 .*huge\.png \(too large to decode"):
        assert len(ImageFolderDataset(tmp_path / "f", "train", image_size=8, channels=3)) == 2


# ---------------------------------------------------------------------------------------- symbolic links


def test_symlink_loop_adds_no_image_twice(tmp_path):
    root = folder(tmp_path, {"a/0.png": noise(8, 8), "a/sub/1.png": noise(8, 8, 1), "b/0.png": noise(8, 8, 2)})
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    noise(8, 8, 3).save(extra / "2.png")
    os.symlink(root / "train" / "a", root / "train" / "a" / "sub" / "loop")  # a -> sub -> loop -> a -> ...
    os.symlink(extra, root / "train" / "b" / "more")  # a real directory outside: followed, once
    os.symlink(extra, root / "train" / "b" / "more-again")
    d = ImageFolderDataset(root, "train", image_size=8, channels=3, warn=False)
    rel = [str(Path(p).relative_to(root / "train")) for p in d.paths]
    assert rel == ["a/0.png", "a/sub/1.png", "b/0.png", "b/more/2.png"]
    assert d.labels.tolist() == [0, 0, 1, 1] and not d.skipped


def test_symlink_into_the_split_does_not_relabel_another_class(tmp_path):
    root = folder(tmp_path, {"a/0.png": noise(8, 8), "b/0.png": noise(8, 8, 1)})
    os.symlink(root / "train", root / "train" / "a" / "up")  # a/up/b/0.png would be b's image labelled a
    d = ImageFolderDataset(root, "train", image_size=8, channels=3, warn=False)
    assert [str(Path(p).relative_to(root / "train")) for p in d.paths] == ["a/0.png", "b/0.png"]
    assert d.labels.tolist() == [0, 1]


# ---------------------------------------------------------------------------------------- pixel formats


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    expected = ((ramp.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as im:
        assert im.mode == "I;16"
    i32 = Image.fromarray(ramp.astype(np.int32))
    assert i32.mode == "I"
    pre_l = Preprocess(image_size=256, channels=1, mean=(0.5,), std=(0.5,))
    pre_rgb = Preprocess(image_size=256, channels=3)
    for image in (open_image(tmp_path / "ramp16.png"), i32):
        grey = pre_l.to_array(image)[..., 0]
        assert np.array_equal(grey, expected)  # 0..65535 -> 0..255, rounded: v / 257
        assert (grey == 255).mean() < 0.003  # PIL's convert("L") would make 99.6 % of it white
        assert np.bincount(grey.ravel(), minlength=256).tolist() == [129] + [257] * 254 + [129]  # even levels
        rgb = pre_rgb.to_array(image)
        assert rgb.shape == (256, 256, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))
    # the same in an image folder (training decodes as predict does)
    folder(tmp_path / "f", {"a/ramp.png": Image.fromarray(ramp), "b/x.png": noise(8, 8)})
    x, _ = ImageFolderDataset(tmp_path / "f", "train", image_size=256, channels=3)[0]
    assert np.array_equal(x[1].numpy(), expected)


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    values = np.array([[[65535, 32768, 0], [257, 514, 65280]]], dtype=">u2")  # 1 row, 2 pixels
    (tmp_path / "rgb16.png").write_bytes(raw_png(2, 1, 16, 2, zlib.compress(b"\0" + values.tobytes())))
    arr = Preprocess(image_size=2, channels=3, resize="nearest").to_array(open_image(tmp_path / "rgb16.png"))
    assert arr[0].tolist() == [[255, 128, 0], [1, 2, 255]]  # the high byte of each 16-bit value


def test_every_colour_mode_comes_out_rgb(tmp_path):
    """Photos as they come (Tiny ImageNet has greyscale JPEGs among its RGB ones, scanners write CMYK, web
    graphics palette + transparency): each is decoded to the same RGB an RGB file of the same picture gives."""
    red, grey = (255, 0, 0), (200, 200, 200)
    pal = Image.new("P", (20, 20))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.info["transparency"] = 1  # palette entry 1 (blue) is transparent; entry 0 (red) is used
    files = {
        "a/rgb.jpg": Image.new("RGB", (20, 20), red),
        "a/cmyk.jpg": Image.new("CMYK", (20, 20), (0, 255, 255, 0)),
        "a/cmyk.tif": Image.new("CMYK", (20, 20), (0, 255, 255, 0)),
        "a/palette-transparency.png": pal,
        "a/rgba.png": Image.new("RGBA", (20, 20), red + (0,)),
        "b/grey.jpg": Image.new("L", (20, 20), 200),
        "b/grey-alpha.png": Image.new("LA", (20, 20), (200, 255)),
        "b/bilevel.png": Image.new("1", (20, 20), 1),
        "b/grey16.png": Image.fromarray(np.full((20, 20), 200 * 257, np.uint16)),
    }
    folder(tmp_path, files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        d = ImageFolderDataset(tmp_path, "train", image_size=8, channels=3)
    got = {Path(p).name: tuple(d[i][0][:, 4, 4].tolist()) for i, p in enumerate(d.paths)}
    assert len(got) == len(files)
    for name in ("rgb.jpg", "cmyk.jpg"):  # JPEG is lossy: within a few levels
        assert np.abs(np.array(got.pop(name)) - red).max() <= 3, name
    assert got.pop("grey.jpg") in {grey, (199, 199, 199), (201, 201, 201)}
    assert got == {"cmyk.tif": red, "palette-transparency.png": red, "rgba.png": red, "grey-alpha.png": grey,
                   "bilevel.png": (255, 255, 255), "grey16.png": grey}
    assert all(d[i][0].shape == (3, 8, 8) for i in range(len(d)))


def test_tiny_imagenet_decode_gives_rgb_for_every_mode():
    from vitkit.data.tinyimagenet import decode

    def encoded(image: Image.Image, fmt: str) -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt)
        return buf.getvalue()

    pal = Image.new("P", (64, 64))
    pal.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 1
    cases = {"grey": (encoded(Image.new("L", (64, 64), 90), "JPEG"), (90, 90, 90)),
             "cmyk": (encoded(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), (255, 0, 0)),
             "palette+alpha": (encoded(pal, "PNG"), (0, 0, 255)),
             "rgba 32x32": (encoded(Image.new("RGBA", (32, 32), (0, 255, 0, 10)), "PNG"), (0, 255, 0))}
    for name, (data, rgb) in cases.items():
        x = decode(data, name)
        assert x.shape == (3, 64, 64) and x.dtype == np.uint8, name
        assert np.abs(x[:, 30, 30].astype(int) - rgb).max() <= 3, (name, x[:, 30, 30])


# ------------------------------------------------------------------------------------ decoded-image cache


@pytest.mark.parametrize("workers", [0, 2])
def test_a_small_split_is_decoded_once_to_the_same_pixels(tmp_path, workers):
    folder(tmp_path, {f"{c}/{i}.png": noise(30 + i, 40, seed=10 * k + i) for k, c in enumerate("abc")
                      for i in range(5)})
    cached = ImageFolderDataset(tmp_path, "train", image_size=12, channels=3)
    plain = ImageFolderDataset(tmp_path, "train", image_size=12, channels=3)
    plain.cache_bytes = 0  # decoded every time, as a split too large for memory is
    assert cached.cacheable and not plain.cacheable
    order = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    first = list(iterate_batches(cached, order, 4, num_workers=workers))
    reference = list(iterate_batches(plain, order, 4, num_workers=workers))
    assert len(first) == len(reference) == 4
    for (x, y), (xr, yr) in zip(first, reference):
        assert x.dtype == torch.uint8 and torch.equal(x, xr) and torch.equal(y, yr)
    for p in (tmp_path / "train").rglob("*.png"):  # nothing is read from disk again
        p.unlink()
    again = list(iterate_batches(cached, order.flip(0), 4, num_workers=workers))
    assert torch.equal(torch.cat([x for x, _ in again]), torch.cat([x for x, _ in first]).flip(0))
    assert torch.equal(cached[3][0], torch.cat([x for x, _ in first])[order.tolist().index(3)])  # dataset[i] too
    with pytest.raises(UserError, match="cannot decode"):  # the uncached one still reads the (now gone) files
        list(iterate_batches(plain, order, 4, num_workers=0))
