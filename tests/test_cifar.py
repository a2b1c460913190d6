"""CIFAR-10/100 from the official python and binary distributions (advlab.data.cifar), written here in the real
formats; the restricted unpickler; the foolbox wheel's CIFAR-10 samples as a real smoke test."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import struct
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advlab.cli import main
from advlab.data import load_dataset
from advlab.data.cifar import BINARY, CIFAR, PYTHON, download_cifar, restricted_load
from advlab.errors import MissingInputError, UsageError

pytestmark = pytest.mark.usefixtures("one_thread")
N = 10


def _fake(seed: int, n: int = N, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n)


def _rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the official (N, 3072) layout: all red values, then green, then blue, row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it (the official files): bytes as (SHORT_)BINSTRING opcodes, which the
    reader turns back into bytes with encoding='bytes' (Python 3's protocol 2 would call _codecs.encode)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _pickle(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)  # bytes-keyed dicts of numpy arrays and lists, as the official files
    path.write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))  # numpy 1 name


def write_cifar(root: Path, name: str, version: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """The official layout of ``name`` (``version`` python or binary) holding the given images per split."""
    layout = (PYTHON if version == "python" else BINARY)[name]
    folder = root / layout.folder
    folder.mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100
    label_names = [f"class{i}" for i in range(classes)]
    for split, files in layout.splits.items():
        images, labels = splits[split]
        for k, file in enumerate(files):  # the split's images spread over its batch files
            part = slice(k * len(images) // len(files), (k + 1) * len(images) // len(files))
            if version == "python":
                key = b"labels" if name == "cifar10" else b"fine_labels"
                batch = {
                    b"batch_label": file.encode(),
                    key: [int(v) for v in labels[part]],
                    b"data": _rows(images[part]),
                }
                if name == "cifar100":
                    batch[b"coarse_labels"] = [int(v) // 5 for v in labels[part]]
                _pickle(folder / file, batch)
            else:
                head = labels[part, None].astype(np.uint8)
                if name == "cifar100":
                    head = np.concatenate([head // 5, head], axis=1)
                (folder / file).write_bytes(np.concatenate([head, _rows(images[part])], axis=1).tobytes())
    if version == "python":
        key = b"label_names" if name == "cifar10" else b"fine_label_names"
        _pickle(folder / layout.meta, {key: [n.encode() for n in label_names]})
    else:
        (folder / layout.meta).write_text("\n".join(label_names) + "\n\n")
    return folder


@pytest.mark.parametrize("version", ["python", "binary"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_formats_read_back_exactly(name, version, tmp_path) -> None:
    classes = 10 if name == "cifar10" else 100
    splits = {"train": _fake(1, 2 * N, classes), "test": _fake(2, N, classes)}
    write_cifar(tmp_path, name, version, splits)
    for split, (images, labels) in splits.items():
        data = load_dataset(f"{name}:{split}", root=tmp_path)
        assert isinstance(data, CIFAR) and data.version == version and len(data) == len(labels)
        assert data.class_names[:2] == ["class0", "class1"] and len(data.class_names) == classes
        for i in range(len(labels)):
            x, y, index = data[i]
            assert index == i and y == labels[i]
            assert torch.equal(x, torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255)
    assert len(load_dataset(name, root=tmp_path)) == N  # the test split by default


def test_python3_pickled_copies_read_too(tmp_path) -> None:
    """A batch re-pickled by Python 3 (protocol 2 stores bytes through _codecs.encode, admitted for latin-1)."""
    folder = write_cifar(tmp_path, "cifar10", "python", {"train": _fake(1), "test": _fake(2)})
    images, labels = _fake(3)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": _rows(images), b"labels": labels.tolist(), b"batch_label": b"x"}, protocol=2)
    )
    data = CIFAR("cifar10", "test", root=tmp_path)
    assert torch.equal(data[3][0], torch.from_numpy(images[3]).permute(2, 0, 1).float() / 255)


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))  # unpickling it would create the file


def test_restricted_unpickler_refuses_other_classes(tmp_path) -> None:
    target = tmp_path / "created_by_pickle"
    folder = write_cifar(tmp_path / "root", "cifar10", "python", {"train": _fake(1), "test": _fake(2)})
    for protocol in (2, 4):
        evil = {b"data": _rows(_fake(3)[0]), b"labels": [0] * N, b"x": _Payload(target)}
        (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=protocol))
        with pytest.raises(UsageError, match=r"refused global (builtins|io)\.open"):
            CIFAR("cifar10", "test", root=tmp_path / "root")
        assert not target.exists()
    with pytest.raises(UsageError, match="refused global"):  # the plain-pickle control: this payload does work
        restricted_load(_write(tmp_path / "p", pickle.dumps(_Payload(target))))
    pickle.loads(pickle.dumps(_Payload(target))).close()
    assert target.exists()


class _Huge:
    """Pickles as a direct call of numpy.ndarray(shape): 80 TB requested by a few dozen bytes of file."""

    def __reduce__(self):
        return (np.ndarray, ((10**13,),))  # float64


def test_restricted_unpickler_refuses_an_array_larger_than_its_file(tmp_path) -> None:
    blob = pickle.dumps(_Huge(), protocol=2)
    with pytest.raises(UsageError, match=r"refused an array of 80000000000000 bytes from a \d+-byte file"):
        restricted_load(_write(tmp_path / "huge", blob))


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def test_missing_batch_and_absent_folder_are_one_line(tmp_path, capsys) -> None:
    folder = write_cifar(tmp_path, "cifar10", "python", {"train": _fake(1), "test": _fake(2)})
    (folder / "data_batch_3").unlink()
    with pytest.raises(MissingInputError, match="lacks data_batch_3"):
        load_dataset("cifar10:train", root=tmp_path)
    with pytest.raises(MissingInputError, match="cifar100 not found: no cifar-100-python/"):
        load_dataset("cifar100", root=tmp_path)
    with pytest.raises(UsageError, match="expected train or test"):
        load_dataset("cifar10:val", root=tmp_path)
    out = tmp_path / "run"
    argv = [
        "eval",
        "--model",
        "fmnist_cnn_standard",
        "--data",
        "cifar10:train",
        "--data-root",
        str(tmp_path),
        "--attack",
        "fgsm",
    ]
    code = main([*argv, "--eps", "0.1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lacks data_batch_3" in err and not out.exists()


def test_download_checks_the_checksum(tmp_path) -> None:
    """The networked path, offline: a file:// mirror of an archive in the official layout."""
    write_cifar(tmp_path / "src", "cifar10", "python", {"train": _fake(1), "test": _fake(2)})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = _write(tmp_path / "cifar-10-python.tar.gz", buf.getvalue())
    with pytest.raises(UsageError, match=r"MD5 .* expected c58f30108f718f92721af3b95e74349a; nothing was extracted"):
        download_cifar("cifar10", tmp_path / "dl", url=archive.as_uri())
    assert not (tmp_path / "dl" / "cifar-10-batches-py").exists()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    folder = download_cifar("cifar10", tmp_path / "dl", url=archive.as_uri(), md5=md5)
    assert folder.is_dir() and len(CIFAR("cifar10", root=tmp_path / "dl")) == N


def test_download_over_http_from_a_local_server(tmp_path) -> None:
    """The HTTP path against a server on 127.0.0.1 serving an archive the test writes: the download is
    checked and extracted; a file the server does not have is one clear error naming the URL, nothing extracted."""
    import functools
    import http.server
    import threading

    write_cifar(tmp_path / "src", "cifar10", "python", {"train": _fake(3), "test": _fake(4)})
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "cifar-10-python.tar.gz", mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        folder = download_cifar("cifar10", tmp_path / "dl", url=f"{base}/cifar-10-python.tar.gz", md5=md5)
        assert torch.equal(CIFAR("cifar10", root=tmp_path / "dl")[0][0], CIFAR("cifar10", root=tmp_path / "src")[0][0])
        assert folder == tmp_path / "dl" / "cifar-10-batches-py"
        with pytest.raises(MissingInputError, match=r"could not download cifar100 from http://127\.0\.0\.1:.*404"):
            download_cifar("cifar100", tmp_path / "dl2", url=f"{base}/cifar-100-python.tar.gz")
        assert not (tmp_path / "dl2" / "cifar-100-python").exists()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


FOOLBOX_CIFAR = Path(__import__("importlib.util").util.find_spec("foolbox").origin).parent / "data"


def test_foolbox_cifar10_samples_smoke(tmp_path, capsys) -> None:
    """The foolbox wheel's 20 real CIFAR-10 test images as an official test_batch, evaluated from the CLI with a
    3x32x32 model given as a factory; labels and clean predictions match the Python model per sample."""
    files = sorted(FOOLBOX_CIFAR.glob("cifar10_*.png"))
    if not files:
        pytest.skip("the foolbox wheel (advlab[samples]) is not installed")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(re.match(r"cifar10_\d+_(\d+)", f.stem).group(1)) for f in files])
    write_cifar(tmp_path, "cifar10", "python", {"train": (images[:5], labels[:5]), "test": (images, labels)})
    (tmp_path / "net.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def make():
                torch.manual_seed(0)
                return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 15 * 15, 10))
            """
        )
    )
    out = tmp_path / "run"
    argv = ["eval", "--model", f"{tmp_path / 'net.py'}:make", "--data", "cifar10", "--data-root", str(tmp_path)]
    assert main([*argv, "--attack", "fgsm", "--eps", "8/255", "--out", str(out), "--quiet"]) == 0, capsys.readouterr()
    assert json.loads((out / "summary.json").read_text())["model"]["input_size"] == [3, 32, 32]
    records = sorted(
        (r for f in (out / "records").rglob("*.jsonl") for r in map(json.loads, f.read_text().splitlines())
         if "index" in r),  # each file ends with its end-of-batch line
        key=lambda r: r["index"],
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 15 * 15, 10)
    ).eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert [r["label"] for r in records] == labels.tolist()
    assert [r["clean_top5"][0] for r in records] == pred.tolist()


class _HugeReconstruct:
    """Pickles as numpy's own array reconstruction asked for 10**7 objects: 80 MB from a file of a few bytes."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (10**7,), b"O"))


def test_restricted_unpickler_refuses_a_reconstruction_larger_than_its_file_or_of_objects(tmp_path) -> None:
    blob = pickle.dumps(_HugeReconstruct(), protocol=2)
    with pytest.raises(UsageError, match=r"refused an array of \d+ bytes \(object\)"):
        restricted_load(_write(tmp_path / "objects", blob))
    objects = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(UsageError, match=r"refused (an array|dtype object)"):
        restricted_load(_write(tmp_path / "small_objects", objects))
