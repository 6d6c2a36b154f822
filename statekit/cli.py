"""The `statekit` command: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .assess import assess
from .backends import URL_FORMS, redact_url
from .errors import StatekitError
from .profile import WorkloadProfile


def _cmd_review(args: argparse.Namespace) -> int:
    from .review import run_review

    reports = run_review(args.profiles, out_dir=args.out, redis_url=args.redis_url, progress=not args.quiet)
    for r in reports:
        print(f"{r.name}: {r.verdict}\n  {r.html}\n  {r.json}")
    if len(reports) > 1:
        print(f"index: {Path(args.out) / 'index.html'}")
    return 0


def _cmd_assess(args: argparse.Namespace) -> int:
    results = [assess(WorkloadProfile.from_yaml(p)) for p in args.profiles]
    if args.json:
        print(json.dumps([a.as_dict() for a in results], indent=2))
    else:
        print("\n\n".join(a.as_text() for a in results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statekit",
        description="Decide and run the state of AI agents on Redis: assess a workload, render a design review.",
        epilog="Redis URL forms:\n  " + "\n  ".join(URL_FORMS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"statekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    review = sub.add_parser("review", help="render the design-review report (HTML, notebook, JSON) for profiles")
    review.add_argument("profiles", nargs="+", metavar="PROFILE", help="workload profile YAML files")
    review.add_argument("--out", default="reports", help="directory for the reports (default: reports)")
    review.add_argument(
        "--redis-url", default="fakeredis://", help="Redis to run against (default: embedded fakeredis://)"
    )
    review.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    review.set_defaults(func=_cmd_review)

    ass = sub.add_parser("assess", help="does this workload need state? a verdict with reasons and costs")
    ass.add_argument("profiles", nargs="+", metavar="PROFILE", help="workload profile YAML files")
    ass.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ass.set_defaults(func=_cmd_assess)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; a statekit error prints its message (secrets redacted) and exits 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StatekitError as exc:
        print(f"statekit: error: {redact_url(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
