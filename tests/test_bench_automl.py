"""The AutoML benchmark is optional: without autogluon it says so and succeeds."""

from benchmarks import bench_automl


def test_bench_automl_skips_with_a_clear_message_without_autogluon(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench_automl, "autogluon_available", lambda: False)
    readme = tmp_path / "README.md"
    assert bench_automl.main(["--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    assert "skipped, autogluon.tabular is not installed" in out and "[automl]" in out
    assert not readme.exists()  # nothing measured, nothing written
