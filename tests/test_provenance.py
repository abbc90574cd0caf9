"""What a result records as its code's commit."""

import shutil
import subprocess
from pathlib import Path

import pytest

from lrtrain.provenance import commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    run = tmp_path / "benchmarks" / "checkpoints" / "run"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch\n1\n")
    (tmp_path / "benchmarks" / "results").mkdir()
    (tmp_path / "benchmarks" / "results" / "speed.md").write_text("# before\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    monkeypatch.chdir(tmp_path.parent)  # commit() reads the tree it is given, not the working directory
    return tmp_path


def test_clean_tree_gives_the_bare_commit(repo):
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert commit(repo / "src") == head


def test_moved_run_folders_do_not_mark_the_code_modified(repo):
    shutil.move(repo / "benchmarks" / "checkpoints" / "run", repo / "run-elsewhere")
    assert not commit(repo / "src").endswith("+dirty")


def test_a_results_file_being_rewritten_does_not_mark_the_code_modified(repo):
    """A benchmark writes its table after each model: from the second on it called its own code dirty."""
    (repo / "benchmarks" / "results" / "speed.md").write_text("# after the first model\n")
    assert not commit(repo / "src").endswith("+dirty")


def test_modified_code_anywhere_in_the_tree_is_dirty(repo):
    (repo / "benchmarks" / "bench.py").write_text("y = 2\n")
    _git(repo, "add", "benchmarks/bench.py")
    assert commit(repo / "src").endswith("+dirty")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "bench")
    (repo / "benchmarks" / "bench.py").write_text("y = 3\n")
    assert commit(repo / "src").endswith("+dirty")


def test_outside_a_checkout_it_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert commit(tmp_path) == "unknown"


def test_by_default_it_is_the_commit_of_lrtrains_own_code_wherever_it_runs(tmp_path, monkeypatch):
    import lrtrain

    here = commit(Path(lrtrain.__file__).parent)
    monkeypatch.chdir(tmp_path)  # not a git tree
    assert commit() == here


def test_a_commit_given_in_the_environment_is_the_packages_own(repo, monkeypatch):
    """The GPU machine's copy holds an older state's .git: the runner says which commit its workers run."""
    monkeypatch.setenv("LRTRAIN_COMMIT", "2e16211")
    assert commit() == "2e16211"
    assert commit(repo / "src") != "2e16211"  # a tree given explicitly is read from its own git
