"""README benchmark tables: the marker-block writer and the pipeline table from artifacts."""

import pytest
from test_blend_fixtures import make_experiment, write_all_models, write_zero_test_labels

from benchmarks.bench_pipeline import collect, machine_info, to_markdown
from benchmarks.readme_table import update_readme_table
from trajstack.cli import main as cli_main


def test_update_readme_table_replaces_only_its_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- bench:cache -->\nold cache\n<!-- /bench:cache -->\n\ntail\n")
    assert update_readme_table(readme, "pipeline", "| a |\n|---|\n| 1 |")  # appended
    assert update_readme_table(readme, "cache", "new cache")
    text = readme.read_text()
    assert "old cache" not in text and "new cache" in text and "tail" in text
    assert text.index("<!-- bench:pipeline -->") > text.index("tail")
    assert not update_readme_table(readme, "cache", "new cache")  # unchanged: no write
    assert update_readme_table(readme, "pipeline", "| b |")
    assert "| 1 |" not in readme.read_text() and readme.read_text().count("bench:pipeline -->") == 2
    (tmp_path / "broken.md").write_text("<!-- bench:x -->\nno end\n")
    with pytest.raises(ValueError, match="only one"):
        update_readme_table(tmp_path / "broken.md", "x", "y")


def test_pipeline_table_from_a_finished_experiment(tmp_path):
    exp = make_experiment(tmp_path, extra_overrides=["report.enabled=false"])
    write_all_models(exp)
    assert cli_main(["blend", *exp.cli_args()]) == 0
    result = {**collect(exp.cfg), "command_wall_s": {"blend": 1.5}, "machine": machine_info()}
    assert {r["stage"] for r in result["runs"]} == {"stage1", "stage2"}
    assert all(r["cv_mae"] > 0 and r["wall_time_s"] >= 0 for r in result["runs"])
    table = to_markdown(result)
    assert "| stage2 | lightgbm |" in table and "blend/lp nested" in table
    assert "cores" in table and "blend 1.5" in table
    assert all(r["test_mae"] is None for r in result["runs"])  # no oracle yet


def test_pipeline_table_quotes_every_model_on_an_oracle(tmp_path):
    exp = make_experiment(tmp_path, extra_overrides=["report.enabled=false"])
    write_all_models(exp)
    spec = exp.cfg.dataset
    write_zero_test_labels(exp)
    assert cli_main(["blend", *exp.cli_args()]) == 0
    result = {**collect(exp.cfg), "machine": machine_info()}
    for entry in result["runs"]:
        run = exp.store.load(exp.cfg.experiment_dir / entry["stage"] / entry["run"])
        expected = run.test()[spec.target_columns].abs().to_numpy().mean()
        assert entry["test_mae"] == pytest.approx(expected)
    best = min(result["runs"], key=lambda r: r["cv_mae"])
    assert f"test {result['test']['mae'] / best['test_mae']:.3f} x its test MAE" in to_markdown(result)
