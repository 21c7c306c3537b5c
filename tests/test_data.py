"""The data module: CIFAR-10 (found, downloaded, refused), arrays and image folders."""

import hashlib
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ncsn_tune.data import cifar10 as data_mod
from ncsn_tune.data import data_name, load_cifar10, load_dataset
from ncsn_tune.errors import DataError


def test_real_subset(real_subset):
    train = load_cifar10(real_subset, "train", download=False)
    assert train.values.shape == (5085, 3, 32, 32) and train.values.dtype == np.uint8
    assert train.labels.shape == (5085,) and train.scale == 1 / 255 and train.dim == 3072
    means = train.unit_float32().mean(axis=(0, 2, 3))
    np.testing.assert_allclose(means, [0.494, 0.485, 0.449], atol=1e-3)
    assert load_cifar10(real_subset, "test", download=False).num_points == 1017
    assert load_cifar10(real_subset / "cifar-10-batches-py", "all", download=False).num_points == 6102


def test_data_name_is_the_name_loading_gives(fake_cifar, tmp_path, monkeypatch):
    """data_name (the default run folder runs/<name> of a continued run) is what load_dataset names the same data, for
    every kind of spec, without reading it; a link is named as typed, as the loader names it."""
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "faces.npy", images)
    np.savez(tmp_path / "pets.npz", images=images)
    (tmp_path / "linked.npy").symlink_to(tmp_path / "faces.npy")
    (tmp_path / "church").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "church" / f"{i}.png")
    monkeypatch.setenv("NCSN_TUNE_DATA", str(fake_cifar))
    specs = ["cifar10", "CIFAR-10", str(fake_cifar), str(tmp_path / "faces.npy"), "pets.npz", "linked.npy", "church", "church/"]
    names = [data_name(spec) for spec in specs]
    assert names == [load_dataset(spec, download=False).name for spec in specs]
    assert names == ["cifar10", "cifar10", "cifar10", "faces", "pets", "linked", "church", "church"]
    monkeypatch.chdir(tmp_path / "church")  # the folder one is in: named, not "" (whose run folder was runs/ itself)
    assert data_name(".") == load_dataset(".", download=False).name == "church"
    assert data_name("../church/.") == load_dataset("../church/.", download=False).name == "church"


def test_cifar_layout_is_channel_first(fake_cifar):
    d = load_cifar10(fake_cifar, download=False)
    raw = np.concatenate([
        data_mod._read_cifar_batch(fake_cifar / "cifar-10-batches-py" / f"data_batch_{i}")[0] for i in range(1, 6)
    ])
    assert d.num_points == 20 and d.split == "train"
    np.testing.assert_array_equal(d.values[:, 0].reshape(20, -1), raw.reshape(20, -1)[:, :1024])


def test_found_through_the_environment_and_the_cache(fake_cifar, monkeypatch, tmp_path):
    monkeypatch.setenv("NCSN_TUNE_DATA", str(fake_cifar))
    assert load_cifar10(download=False).num_points == 20
    monkeypatch.delenv("NCSN_TUNE_DATA")
    monkeypatch.setenv("NCSN_TUNE_CACHE", str(fake_cifar))
    assert load_cifar10(split="test", download=False).num_points == 3


def test_missing_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "CIFAR10_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(DataError, match="does not exist") as err:
        load_cifar10(tmp_path / "empty")  # a data root that does not exist is not created
    assert not (tmp_path / "empty").exists() and err.value.fields == ("data_root",)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "empty")
    msg = str(err.value)
    assert "could not be downloaded" in msg and "data root" in msg and "NCSN_TUNE_DATA" in msg and err.value.fields == ("data_root",)
    with pytest.raises(DataError, match="was not found"):
        load_cifar10(tmp_path / "empty", download=False)


def make_archive(fake_cifar, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(fake_cifar / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5_and_unpacks(fake_cifar, tmp_path, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    md5 = make_archive(fake_cifar, archive)
    monkeypatch.setattr(data_mod, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(data_mod, "CIFAR10_MD5", md5)
    seen = []
    d = load_cifar10(progress=lambda done, total, what: seen.append(done))
    assert d.num_points == 20 and seen and seen[-1] == archive.stat().st_size
    cache = tmp_path / "cache"
    assert (cache / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("python", ["with tarfile's data filter (3.11.4+)", "without it (3.10.11, 3.11.2: Debian 12's python3)"])
def test_download_unpacks_on_pythons_with_and_without_tarfiles_data_filter(python, fake_cifar, tmp_path, monkeypatch):
    """A fresh venv on Debian 12's Python 3.11.2 failed with 'extractall() got an unexpected keyword argument filter'."""
    if python.startswith("without"):
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        plain = tarfile.TarFile.extractall

        def no_filter(self, path=".", members=None, *, numeric_owner=False):  # the signature before 3.11.4
            return plain(self, path, members, numeric_owner=numeric_owner)

        monkeypatch.setattr(tarfile.TarFile, "extractall", no_filter)
    archive = tmp_path / "served.tar.gz"
    monkeypatch.setattr(data_mod, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(data_mod, "CIFAR10_MD5", make_archive(fake_cifar, archive))
    assert load_cifar10().num_points == 20


@pytest.mark.parametrize("python", ["with tarfile's data filter", "without it"])
@pytest.mark.parametrize("evil", ["../outside", "link"])
def test_an_archive_reaching_outside_its_folder_is_refused(python, evil, fake_cifar, tmp_path, monkeypatch):
    if python == "without it":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fake_cifar / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        member = tarfile.TarInfo("cifar-10-batches-py/../../outside" if evil == "../outside" else "cifar-10-batches-py/link")
        if evil == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
        else:
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
    monkeypatch.setattr(data_mod, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(data_mod, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="unpack"):
        load_cifar10()
    assert not (tmp_path / "outside").exists() and not (tmp_path / "cache" / "outside").exists()


def test_download_with_wrong_md5_keeps_nothing(fake_cifar, tmp_path, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    make_archive(fake_cifar, archive)
    monkeypatch.setattr(data_mod, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(data_mod, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match="md5"):
        load_cifar10()
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupt_batch_names_the_file(fake_cifar):
    bad = fake_cifar / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(fake_cifar, download=False)


def test_pickle_with_foreign_objects_is_refused(fake_cifar):
    import pickle

    bad = fake_cifar / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(pickle.dumps({b"data": io.BytesIO(b"x")}, protocol=2))
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(fake_cifar, download=False)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npy_layouts_and_uint8(tmp_path, layout):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    arr = nchw if layout == "NCHW" else np.moveaxis(nchw, 1, -1)
    np.save(tmp_path / "x.npy", arr)
    d = load_dataset(str(tmp_path / "x.npy"))
    np.testing.assert_array_equal(d.values, nchw)
    assert d.scale_note == "uint8 / 255" and d.dim == 60


@pytest.mark.parametrize(
    "lo,hi,note,first",
    [(0.0, 1.0, "already in [0, 1]", 0.25), (-1.0, 1.0, "[-1, 1] -> (x + 1) / 2", 0.625), (0.0, 255.0, "[0, 255] / 255", 0.25 / 255)],
)
def test_float_ranges_are_scaled(tmp_path, lo, hi, note, first):
    x = np.full((3, 2, 2, 3), 0.25, dtype=np.float32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = lo, hi
    np.savez(tmp_path / "x.npz", images=x)
    d = load_dataset(str(tmp_path / "x.npz"))
    assert d.scale_note == note
    assert d.unit_float32()[2, 0, 0, 0] == pytest.approx(first)


def test_out_of_range_floats_and_no_rescale(tmp_path):
    np.save(tmp_path / "x.npy", np.array([[0.0, 300.0], [1.0, 2.0]]))
    with pytest.raises(DataError, match="turn rescaling off") as err:
        load_dataset(str(tmp_path / "x.npy"))
    assert err.value.fields == ("rescale",)
    from click.testing import CliRunner

    from ncsn_tune.cli import main

    r = CliRunner().invoke(main, ["sigmas", "--data", str(tmp_path / "x.npy")])
    assert r.exit_code == 2 and "(option --no-rescale)" in r.stderr
    assert load_dataset(str(tmp_path / "x.npy"), rescale=False).scale == 1.0


def test_nan_and_empty_arrays(tmp_path):
    x = np.zeros((4, 3, 2, 2), dtype=np.float32)
    x[2, 1, 0, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match="item 2"):
        load_dataset(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 2, 2)))
    with pytest.raises(DataError, match="no data"):
        load_dataset(str(tmp_path / "empty.npy"))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="bad.npy"):
        load_dataset(str(tmp_path / "bad.npy"))


def test_npz_with_several_arrays_needs_a_name(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    with pytest.raises(DataError, match="several arrays"):
        load_dataset(str(tmp_path / "x.npz"))


def test_image_folder_recursive(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.fromarray(imgs[0]).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(imgs[1]).save(tmp_path / "imgs" / "sub" / "b.PNG")
    Image.fromarray(imgs[2]).save(tmp_path / "imgs" / "sub" / "c.jpg", quality=100)
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    d = load_dataset(str(tmp_path / "imgs"))
    assert d.values.shape == (3, 3, 4, 5)
    np.testing.assert_array_equal(d.values[0], np.moveaxis(imgs[0], -1, 0))
    np.testing.assert_array_equal(d.values[1], np.moveaxis(imgs[1], -1, 0))


def test_image_folder_errors(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="no PNG or JPEG"):
        load_dataset(str(tmp_path / "e"))
    (tmp_path / "m").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "m" / "a.png")
    Image.new("RGB", (5, 4)).save(tmp_path / "m" / "b.png")
    with pytest.raises(DataError, match="b.png is 5x4"):
        load_dataset(str(tmp_path / "m"))
    (tmp_path / "c").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "c" / "a.png")
    (tmp_path / "c" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(str(tmp_path / "c"))


def test_unknown_specs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported"):
        load_dataset(str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="unknown split"):
        load_cifar10(tmp_path, split="valid", download=False)


def test_streamed_image_folder_equals_loaded(tmp_path):
    from ncsn_tune.analysis import max_pairwise_distance
    from ncsn_tune.data.image_folder import ImageFolderArray

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (23, 6, 5, 3), dtype=np.uint8)
    (tmp_path / "f" / "a").mkdir(parents=True)
    for k, img in enumerate(imgs):
        Image.fromarray(img).save(tmp_path / "f" / ("a" if k % 2 else "") / f"{k:03d}.png")
    loaded = load_dataset(str(tmp_path / "f"))
    streamed = load_dataset(str(tmp_path / "f"), stream=True)
    assert isinstance(streamed.values, ImageFolderArray) and streamed.values.shape == loaded.values.shape
    np.testing.assert_array_equal(streamed.values[np.array([5, 2, 9])], loaded.values[[5, 2, 9]])
    np.testing.assert_array_equal(streamed.points()[3:7], loaded.points()[3:7])
    a = max_pairwise_distance(loaded.points(), scale=loaded.scale, block_size=4)
    b = max_pairwise_distance(streamed.points(), scale=streamed.scale, block_size=4, chunk_rows=5, memory_budget=0)
    assert (a.distance, a.pair) == (b.distance, b.pair)


def test_a_large_image_folder_is_decoded_once_into_the_cache(tmp_path, monkeypatch):
    """Issue 31: a folder of many images is decoded in parallel once into a uint8 array in the user's cache and memory-mapped
    from then on; another file, or a changed one, makes another copy."""
    from PIL import Image

    from ncsn_tune.data import image_folder, load_dataset

    monkeypatch.setattr(image_folder, "CACHE_FROM", 40)  # the rule of 1,024 images, at a size a test writes quickly
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (45, 6, 6, 3), dtype=np.uint8)
    for k, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{k:03d}.png")
    first = load_dataset(str(folder))
    assert isinstance(first.values, np.memmap) and any("decoded once into" in n for n in first.notes)
    np.testing.assert_array_equal(np.asarray(first.values), pixels.transpose(0, 3, 1, 2))
    cached = list((tmp_path / "cache" / "image_folders").glob("*.npy"))
    assert len(cached) == 1
    decode = image_folder.decode_images
    monkeypatch.setattr(image_folder, "decode_images", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = load_dataset(str(folder))
    assert again.fingerprint() == first.fingerprint() and not again.notes
    monkeypatch.setattr(image_folder, "decode_images", decode)
    Image.fromarray(pixels[0][::-1].copy()).save(folder / "000.png")  # one image changed
    changed = load_dataset(str(folder))
    assert changed.fingerprint() != first.fingerprint() and len(list((tmp_path / "cache" / "image_folders").glob("*.npy"))) == 2


def test_decoding_into_a_full_disk_is_refused_before_any_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from PIL import Image

    from ncsn_tune.data import image_folder, load_dataset
    from ncsn_tune.errors import DataError

    monkeypatch.setattr(image_folder, "CACHE_FROM", 3)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(4):
        Image.new("RGB", (16, 16), (k, 0, 0)).save(folder / f"{k}.png")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))
    with pytest.raises(DataError, match=r"takes 0.00 GB .* which has 0.00 GB free"):
        load_dataset(str(folder))
