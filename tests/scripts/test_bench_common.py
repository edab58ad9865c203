"""The docs-section helpers of scripts/bench_common.py shared by both benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import bench_common
import pytest


def test_replace_section_keeps_other_sections(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\nintro\n<!-- bench_mtl:start -->\nold\n<!-- bench_mtl:end -->\n"
        "<!-- other:start -->\nkeep\n<!-- other:end -->\n"
    )
    updated = bench_common.replace_section(docs.read_text(), "new table\n", "bench_mtl")
    assert "old" not in updated and "new table" in updated
    assert updated.startswith("# Benchmarks\n\nintro\n<!-- bench_mtl:start -->\nnew table\n")
    assert "<!-- other:start -->\nkeep\n<!-- other:end -->" in updated
    assert bench_common.replace_section(updated, "new table", "bench_mtl") == updated


def test_replace_section_appends_without_markers_and_refuses_half() -> None:
    appended = bench_common.replace_section("# Benchmarks\n", "body", "bench_mtl_quick")
    assert appended == (
        "# Benchmarks\n\n<!-- bench_mtl_quick:start -->\nbody\n<!-- bench_mtl_quick:end -->\n"
    )
    with pytest.raises(ValueError, match="must both appear"):
        bench_common.replace_section("<!-- x:end -->\n<!-- x:start -->", "body", "x")


def test_replace_section_twice_keeps_the_last_body(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n<!-- bench_mtl:start -->\nmtl\n<!-- bench_mtl:end -->\n")
    text = bench_common.replace_section(path.read_text(), "first", "bench_federated")
    text = bench_common.replace_section(text, "second", "bench_federated")
    bench_common.write_text(path, text)
    written = path.read_text()
    assert "<!-- bench_mtl:start -->\nmtl\n<!-- bench_mtl:end -->" in written
    assert "<!-- bench_federated:start -->\nsecond\n<!-- bench_federated:end -->" in written
    assert "first" not in written
    with pytest.raises(ValueError, match="must both appear"):
        bench_common.replace_section("<!-- bench_federated:start -->", "x", "bench_federated")


def test_write_sections_creates_missing_docs_and_replaces_each_section(tmp_path: Path) -> None:
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    bench_common.write_sections(docs, {"a": "one", "b": "two"})
    assert docs.read_text() == (
        "# Benchmarks\n\n<!-- a:start -->\none\n<!-- a:end -->\n\n"
        "<!-- b:start -->\ntwo\n<!-- b:end -->\n"
    )
    bench_common.write_sections(docs, {"b": "three"})
    assert "<!-- a:start -->\none\n<!-- a:end -->" in docs.read_text()
    assert "<!-- b:start -->\nthree\n<!-- b:end -->" in docs.read_text()
    assert "two" not in docs.read_text()


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_code_revision_names_the_commit_and_local_changes_outside_docs(tmp_path: Path) -> None:
    assert bench_common.code_revision(tmp_path) is None
    _git(tmp_path, "init", "-q")
    (tmp_path / "docs").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "results.json").write_text("{}\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    commit = _git(tmp_path, "rev-parse", "--short=12", "HEAD")

    assert bench_common.code_revision(tmp_path) == commit
    (tmp_path / "docs" / "results.json").write_text('{"written": "by a benchmark"}\n')
    (tmp_path / "untracked.py").write_text("y = 2\n")
    assert bench_common.code_revision(tmp_path) == commit
    (tmp_path / "code.py").write_text("x = 2\n")
    assert bench_common.code_revision(tmp_path) == f"{commit}+changes"


def test_revision_lines_group_rows_by_revision() -> None:
    def run(variant: str, seed: int, code: str | None) -> dict:
        return {"variant": variant, "seed": seed, "code": code}

    assert bench_common.revision_lines([run("a", 0, "abc"), run("b", 0, "abc")], "variant") == [
        "Code revision: `abc`.",
        "",
    ]
    assert bench_common.revision_lines([{"variant": "a", "seed": 0}], "variant")[0] == (
        "Code revision: not recorded."
    )
    assert bench_common.revision_lines([], "variant") == []
    mixed = [run("a", 0, None), run("a", 1, "def"), run("b", 0, "def"), run("b", 1, "def")]
    assert bench_common.revision_lines(mixed, "variant")[0] == (
        "Code revision: not recorded (a seed 0); `def` (a seed 1, b)."
    )
