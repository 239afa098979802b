""""Sample now": a SAMPLE_NOW file in the run folder makes previews at the next step, once."""

from __future__ import annotations

import trainer.train as train_module
from trainer.events import read_events
from trainer.run_folder import SAMPLE_NOW_FILE
from trainer.train import train


def test_sample_now_file_makes_one_set_of_previews_at_the_next_step(make_config, monkeypatch):
    cfg = make_config("sample-now", training__max_steps=6, sampling__every_n_steps=0, sampling__at_end=False,
                      sampling__steps=2)
    original = train_module.report_step

    def ask_at_step_3(s, *args):
        original(s, *args)
        if s.progress.step == 3:
            (s.run_dir / SAMPLE_NOW_FILE).write_text("asked by the test\n")

    monkeypatch.setattr(train_module, "report_step", ask_at_step_3)
    result = train(cfg, show_progress=False)
    assert result.status == "completed"
    samples = [e for e in read_events(cfg.run_dir) if e["type"] == "sample"]
    assert [e["step"] for e in samples] == [3], f"one preview at the asked step, none otherwise: {samples}"
    assert (cfg.run_dir / samples[0]["path"]).is_file()
    assert not (cfg.run_dir / SAMPLE_NOW_FILE).exists(), "the request is taken, so it makes one set only"
