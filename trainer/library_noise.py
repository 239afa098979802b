"""Drop two library warnings that are always irrelevant here and send newcomers looking for a fix.

Both land in the log the web page shows, on every run:

- transformers: "`CLIPImageProcessor` requires torchvision (not installed); falling back to ...". Importing
  a diffusers SD pipeline touches the image processor of its safety checker, which we never load.
- diffusers: "No LoRA keys associated to CLIPTextModel found ..." when an adapter trains only the UNet
  (the default). Whether an adapter fits its model is checked by our own loaders, which fail loudly.

Filters on exactly those loggers and messages; every other warning of both libraries still shows.
"""

from __future__ import annotations

import logging

# (logger name, a fragment of the message to drop)
KNOWN_NOISE = (
    ("transformers.utils.import_utils", "requires torchvision (not installed)"),
    ("diffusers.loaders.lora_base", "No LoRA keys associated to"),
)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet_known_library_noise() -> None:
    """Install the filters (idempotent). Works before or after the libraries are imported: their
    loggers are the standard ``logging`` ones of these names."""
    for name, fragment in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessages(fragment))
