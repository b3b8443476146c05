#!/usr/bin/env python3
"""Render deploy/helm/lb with its default values through the real Helm template engine
(Helm v4's Go library, shipped by the PyPI package helm-python-sdk) and print one YAML
stream, the same as `helm template lb deploy/helm/lb -n lb-system` would.

Usage: python render.py [CHART_DIR] [NAMESPACE]
Install the engine first with deploy/helm/install-helm-engine.sh.
"""

import sys
from pathlib import Path

import helm_python

chart_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "lb"
namespace = sys.argv[2] if len(sys.argv) > 2 else "lb-system"

chart = helm_python.Chart.load(str(chart_dir))
rendered = chart.render(name="lb", namespace=namespace, is_install=True)
for path in sorted(rendered):
    if path.endswith("NOTES.txt"):
        continue
    print(f"---\n# Source: {path}")
    print(rendered[path])
