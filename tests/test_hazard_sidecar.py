"""#24 items 5 and 6: a `<store>.d` (or its results/, embeddings/) that is not a usable folder, a results path that
is a folder, a results file with garbled bytes: one line naming the path, before any composite is evaluated, and a
way past it that needs no deleting by hand (--results-name, --recompute)."""
import os

import numpy as np
import pytest
from conftest import assert_one_line_error, make_random_store, make_tiny_classifier, run_cli

from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.index import build_index


@pytest.fixture
def store(tmp_path):
    return make_random_store(tmp_path / "s.h5", n_fg=5, n_bg=4, seed=31)


def args(path, *extra):
    return ["search", "--store", str(path), "--model", "test/tiny", "--results-name", "r", "--grid", "-", "-q",
            *extra]


def unusable(path, how: str):
    """Make ``path`` something that is not a usable folder."""
    if how == "file":
        path.write_text("not a folder")
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "dangling link":
        path.symlink_to(path.with_name("nowhere"))
    elif how == "loop":
        path.symlink_to(path)


HOW = ["file", "fifo", "dangling link", "loop"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("where", ["d", "results"])
def test_unusable_sidecar_folder_is_refused_before_the_search(store, forwards, capsys, how, where):
    folder = sidecar_folder(store)
    if where == "results":
        folder.mkdir()
        folder = folder / "results"
    unusable(folder, how)
    rc, _, err = run_cli(args(store), capsys)
    assert_one_line_error(rc, err, f"{folder} is not a (usable )?folder.*move it away")
    assert forwards == []


@pytest.mark.parametrize("how", ["file", "dangling link"])
def test_unusable_embeddings_folder_is_refused_before_embedding(store, forwards, how):
    sidecar_folder(store).mkdir()
    unusable(sidecar_folder(store) / "embeddings", how)
    with Store(store, "r+") as s, pytest.raises(AdvbgError, match="embeddings is not a (usable )?folder"):
        build_index(s, make_tiny_classifier(), progress=False)
    assert forwards == []


def test_results_path_that_is_a_folder_is_refused_before_the_search(store, forwards, capsys):
    path = sidecar_folder(store) / "results" / "r.h5"
    path.mkdir(parents=True)
    for extra in ([], ["--resume"], ["--recompute"]):
        rc, _, err = run_cli(args(store, *extra), capsys)
        assert_one_line_error(rc, err, f"results path {path} exists and is not a regular file.*--results-name")
    assert forwards == []
    rc, _, err = run_cli(args(store, "--results-name", "r2"), capsys)      # the way past it
    assert rc == 0, err


@pytest.mark.parametrize("where", ["head", "middle"])
def test_garbled_results_file_is_named_and_recompute_writes_it_again(store, forwards, capsys, where):
    rc, out, _ = run_cli(args(store), capsys)
    path = sidecar_folder(store) / "results" / "r.h5"
    data = bytearray(path.read_bytes())
    at = 100 if where == "head" else len(data) // 3
    data[at:at + 1500] = np.random.default_rng(7).integers(0, 256, 1500, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    for extra in ([], ["--resume"]):
        forwards.clear()
        rc, _, err = run_cli(args(store, *extra), capsys)
        assert_one_line_error(rc, err, f"{path}.*damaged.*--recompute")
        assert forwards == [] and path.read_bytes() == bytes(data)       # nothing used, nothing replaced
    rc, again, err = run_cli(args(store, "--recompute"), capsys)
    assert rc == 0, err
    assert again.splitlines()[0].split(" | ")[0] == out.splitlines()[0].split(" | ")[0]
