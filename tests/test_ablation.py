import json

import pytest
import yaml

from ls_video.commands.ablation import END, START, main, table, write_results


def test_results_block_is_replaced_in_place(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nintro\n")
    write_results(str(doc), f"{START}\nfirst\n{END}")
    write_results(str(doc), f"{START}\nsecond\n{END}")
    text = doc.read_text()
    assert "intro" in text and "second" in text and "first" not in text and text.count(START) == 1


def test_table_reports_ratios_to_none():
    row = dict(added_params=0, train_step_s=1.0, sample_s=2.0, direction_acc=0.25, step_acc=0.25, color_acc=1.0,
               shape_acc=1.0, consistency=1.0)
    text = table({"none": row, "shift": dict(row, train_step_s=1.5, sample_s=2.0, toy_fvd=3.0)})
    assert "| shift | 0 | 1.50 | 1.00 |" in text and "| 3.0 |" in text


def test_unknown_variant_is_a_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump(dict(train_config="configs/toy.yaml", out=str(tmp_path), results="x.md",
                                       steps=1, seeds=1, variants={"shift": []})))
    assert main(["-c", str(cfg), "--only", "lstm"]) == 2
    assert "unknown variants" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_end_to_end_on_a_tiny_budget(tiny_base, tmp_path, monkeypatch):
    """Run from an empty folder, as from the installed wheel: fails if a stage runs a script by a checkout
    path (``train.py``) or reads the shipped config relative to the clone's root."""
    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    shared = ["--model.pretrained_model_name_or_path", tiny_base,
              "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.num_train_clips", "8",
              "--data.init_args.num_val_clips", "2", "--data.init_args.batch_size", "2",
              "--data.init_args.shard_size", "4", "--trainer.val_check_interval", "2",
              "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
    cfg = dict(train_config="configs/toy.yaml", out=str(tmp_path / "abl"), results=str(tmp_path / "RESULTS.md"),
               steps=2, seeds=1, timing_reps=1, toy_net=str(tmp_path / "toynet"), toy_net_steps=2, shared=shared,
               variants={"none": ["--model.temporal.temporal_mixing", "none"],
                         "temporal_conv": ["--model.temporal.temporal_mixing", "temporal_conv"]})
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-c", str(path)]) == 0
    rows = json.loads((tmp_path / "abl" / "results.json").read_text())
    assert set(rows) == {"none", "temporal_conv"}
    assert rows["none"]["added_params"] == 0 and rows["temporal_conv"]["added_params"] > 0
    assert all(r["toy_fvd"] >= 0 and r["train_step_s"] > 0 for r in rows.values())
    text = (tmp_path / "RESULTS.md").read_text()
    assert START in text and "| temporal_conv |" in text and "ls-video ablation" in text
    assert main(["-c", str(path), "--only", "none"]) == 0  # finished runs are reused, not retrained
