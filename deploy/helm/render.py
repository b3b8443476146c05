#!/usr/bin/env python3
"""Render deploy/helm/lb through the real Helm template engine (Helm v4's Go library,
shipped by the PyPI package helm-python-sdk) and print one YAML stream, the same as
`helm template lb deploy/helm/lb -n NAMESPACE [-f VALUES]` would.

Usage: python render.py [CHART_DIR] [NAMESPACE] [VALUES.yaml] [--notes]
--notes prints NOTES.txt instead of the manifests.
`cargo xtask setup` installs the engine into .venv (deploy/helm/install-helm-engine.sh
does only that).
"""

import sys
from pathlib import Path

import helm_python


args = [a for a in sys.argv[1:] if a != "--notes"]
notes = "--notes" in sys.argv[1:]
chart_dir = Path(args[0]) if len(args) > 0 else Path(__file__).parent / "lb"
namespace = args[1] if len(args) > 1 else "lb-system"
values = None
if len(args) > 2:
    import yaml  # PyYAML, a dependency of kubernetes-validate (cargo xtask setup)

    values = yaml.safe_load(Path(args[2]).read_text())

chart = helm_python.Chart.load(str(chart_dir))
rendered = chart.render(values=values, name="lb", namespace=namespace, is_install=True)
for path in sorted(rendered):
    if path.endswith("NOTES.txt"):
        if notes:
            print(rendered[path])
        continue
    if notes or not rendered[path].strip():
        continue
    print(f"---\n# Source: {path}")
    print(rendered[path])
