"""A stand-in for ``python -m trainer <tool> ... --events FILE`` in the Test tab's job tests: no torch, instant.

It follows the tools' events contract (``trainer/tools/progress.py``): ``progress`` lines, then one
``finished`` line. What it does is picked by the first adapter path's name:

- contains ``fail``: a ``finished`` line with ``ok: false`` and a message, exit 2 (as a refused input)
- contains ``crash``: prints a traceback-like line and exits 3 without a ``finished`` line
- otherwise: three progress steps, then the output written (``--out`` as given, or ``grid.png`` in
  ``--out`` for ``sample``) and ``finished`` ``ok: true``; ``info`` prints JSON on stdout instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    events = Path(args[args.index("--events") + 1])
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    subject = next((a for a in args[1:] if a.endswith(".safetensors") or ".safetensors:" in a), args[0] if args else "")
    if tool == "sample":
        subject = args[args.index("--lora") + 1]

    def emit(event: str, **fields) -> None:
        with open(events, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    if "crash" in subject:
        print("RuntimeError: fake crash in the tool", file=sys.stderr)
        return 3
    if "fail" in subject:
        print(f"error: fake refusal of {subject}", file=sys.stderr)
        emit("finished", ok=False, output=None, message=f"fake refusal of {subject}")
        return 2
    for done in range(4):
        emit("progress", done=done, total=3, what=f"fake {tool}")
        time.sleep(0.05)
    if tool == "info":
        print(json.dumps({"format": "kohya", "path": subject}))
        emit("finished", ok=True, output=None, message="read")
        return 0
    target = out / "grid.png" if tool == "sample" else out
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"fake output of " + tool.encode())
    emit("finished", ok=True, output=str(target), message=f"fake {tool} done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
