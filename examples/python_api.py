"""argofl end to end from Python: config → hera Workflow (customised) → manifest → local run → submit.

    python examples/python_api.py                  # builds, saves argo-out/…, runs 1 tiny round here
    ARGO_SERVER=https://argo.example:2746 ARGO_TOKEN=… python examples/python_api.py --submit

The hera ``Workflow`` is an ordinary hera object: change it as you would any other (labels, pod GC,
parallelism, …) before saving, running or submitting it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from argofl import api

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fedavg-fmnist-torch.yaml"
TINY = {"rounds": "1", "clients": "2", "min-clients": "2", "data-limit": "400", "local-epochs": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, default=Path("argo-out"), help="where the manifest goes")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--submit", action="store_true", help="also submit to $ARGO_SERVER")
    parser.add_argument("--no-run", action="store_true", help="skip the local run")
    args = parser.parse_args()

    config = api.load_config(args.config)
    workflow = api.build(config)
    # customise it like any hera workflow: a label for your team, at most 4 pods at once
    workflow.labels = {**(workflow.labels or {}), "team": "federated"}
    workflow.parallelism = 4
    path = api.save(workflow, args.out / f"{config.name}.yaml")
    print(f"manifest: {path}")

    if not args.no_run:
        result = api.run_local(workflow, TINY, runs_dir=args.runs_dir)
        print(f"local run {result.name}: {result.phase} ({result.run_dir})")
        if result.phase != "Succeeded":
            raise SystemExit(1)
    if args.submit:
        name = api.submit(workflow, {"rounds": "20"})
        print(f"submitted {name}")


if __name__ == "__main__":
    main()
