"""Post-training tools, one module per verb (``info``, ``convert``, ``merge``, ``combine``, ``resize``,
``extract``), each a function over adapter files / base models plus a thin CLI command in
``trainer/commands/``. Each tool checks its own output before reporting success; the equality it checks
is written in its docstring. ``progress`` is the shared bar + events file the UI follows.
"""
