"""Start the lora-studio web UI: ``python launch.py`` then open http://127.0.0.1:7860.

Safe by default: it listens on 127.0.0.1 only. Listening on another address (``--host 0.0.0.0``) or a
public share link (``--share``) exposes a page that can start processes and read files, so both refuse
to start without ``--auth user:password``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))  # a plain checkout works without `pip install -e .`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs", help="where run folders go (default: ./runs)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data", help="where uploaded datasets go (default: ./data)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login (needed with --share or a non-local --host)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (needs --auth)")
    parser.add_argument("--grace-seconds", type=float, default=60.0,
                        help="how long Stop waits for the trainer to save and exit before killing it (default: 60)")
    parser.add_argument("--no-warm-trainer", action="store_true",
                        help="do not keep a trainer process ready while nothing trains (it has torch and diffusers "
                             "imported, so Start reaches the first step seconds sooner; it costs a few hundred MB)")
    return parser.parse_args(argv)


def is_local_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(args: argparse.Namespace) -> str | None:
    """The reason to refuse starting, or None: a page reachable from other machines needs a login."""
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0] or not args.auth.split(":", 1)[1]):
        return "--auth must be USER:PASSWORD, both non-empty"
    if args.share and not args.auth:
        return "--share makes the UI reachable from the internet: add --auth USER:PASSWORD"
    if not is_local_host(args.host) and not args.auth:
        return f"--host {args.host} makes the UI reachable from other machines: add --auth USER:PASSWORD"
    return None


def build_studio(args: argparse.Namespace):
    from app.datasets import DatasetStore
    from app.jobs import JobManager
    from app.ui import Settings, Studio

    settings = Settings(runs_dir=args.runs_dir.resolve(), data_dir=args.data_dir.resolve())
    jobs = JobManager(settings.runs_dir, grace_seconds=args.grace_seconds, warm_standby=not args.no_warm_trainer)
    return Studio(settings, jobs, DatasetStore(settings.data_dir))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_exposure(args)
    if problem:
        print(f"lora-studio: refusing to start: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local tool
    from app.ui import CSS, THEME, build_ui

    studio = build_studio(args)
    studio.jobs.start_background()
    page = build_ui(studio)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    print(f"lora-studio: runs in {studio.settings.runs_dir}, datasets in {studio.settings.data_dir}", flush=True)
    try:
        page.queue(default_concurrency_limit=4).launch(
            server_name=args.host, server_port=args.port, share=args.share, auth=auth,
            allowed_paths=[str(studio.settings.runs_dir), str(studio.settings.data_dir)],
            css=CSS, theme=THEME, footer_links=[], show_error=True,
            quiet=True, prevent_thread_lock=True,  # our own lines below: Gradio's talk of `launch(share=True)` misleads here
        )
        print(f"lora-studio: open {page.local_url} in a browser (Ctrl+C stops the page; a running training "
              "goes on and the next start re-attaches to it)", flush=True)
        if page.share_url:
            print(f"lora-studio: public link {page.share_url} (login required)", flush=True)
        page.block_thread()
    except OSError as err:
        reason = str(err).split(". ")[0]  # Gradio goes on about GRADIO_SERVER_PORT and launch(): not ours
        print(f"lora-studio: cannot listen on {args.host}:{args.port} ({reason}); is it already running? "
              f"Otherwise pick another port, e.g. --port {args.port + 1}", file=sys.stderr)
        return 1
    finally:
        studio.jobs.close()  # the running trainer keeps going; the next start re-attaches to it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
