"""lora-studio web UI: builds configs, runs the trainer as a separate process, follows its run folder."""
