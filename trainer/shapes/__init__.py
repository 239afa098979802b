"""The shapes world: a procedural, captioned image set that ``builtin:shapes-sd`` was trained on.

A random-weight model cannot show a LoRA learning anything a person can see. This package holds what it
takes to ship one that draws instead: the world's scenes and captions (``world``), an analyser that reads a
scene back from pixels (``analyser``), and the recipe that trains the base model (``base_training``).
"""
