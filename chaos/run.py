"""Run the chaos scenarios and report: ``python -m chaos.run [--short|--long] [--only 1,3]``.

Exits 1 if any scenario lost an event or failed one of its checks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

from celery_kafka_bridge.embedded import EmbeddedKafka
from chaos import report
from chaos.measure import Result
from chaos.profiles import PROFILES, Profile
from chaos.scenarios import SCENARIOS, Scenario
from chaos.stage import Context

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(scenario: Scenario, profile: Profile, ctx: Context) -> Result:
    """Run a scenario; one that crashes becomes a failed row, and the run goes on."""
    try:
        return scenario(profile, ctx)
    except Exception as exc:  # a crash is a finding to report, not to hide
        traceback.print_exc()
        result = Result(getattr(scenario, "__name__", "?"), (scenario.__doc__ or "").strip())
        result.check("scenario ran to the end", False, f"{type(exc).__name__}: {exc}")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--short", dest="profile", action="store_const", const="short")
    which.add_argument("--long", dest="profile", action="store_const", const="long")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,3")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the reports go")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile or os.environ.get("CHAOS_PROFILE", "short")]
    only = [key.strip() for key in args.only.split(",") if key.strip()]
    chosen = only or list(SCENARIOS)
    unknown = sorted(set(chosen) - SCENARIOS.keys())
    if unknown:
        parser.error(f"no scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    results: list[Result] = []
    with EmbeddedKafka(log_path=workdir / "tansu.log") as kafka:
        ctx = Context(kafka.bootstrap_servers, workdir)
        for key in chosen:
            for scenario in SCENARIOS[key]:
                print(f"scenario {key}: {(scenario.__doc__ or '').strip()}", flush=True)
                results.append(run_one(scenario, profile, ctx))
                print(report.table(results[-1:]), "\n", flush=True)
    print(report.table(results))
    json_path, md_path = report.write(results, profile, args.out, only)
    print(f"\nreports: {json_path} {md_path}; logs: {workdir}")
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(f"FAILED {result.scenario}: {'; '.join(result.failures())}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
