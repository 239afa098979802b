"""lora-studio's training engine: a typed config in, a run folder out.

Importing this package loads no torch, so the UI process can read configs and events cheaply.
"""

__version__ = "0.1.0"
