#!/usr/bin/env python3
"""Validate custom resources against the openAPIV3Schema of their CustomResourceDefinition,
as the API server would on `kubectl apply` (kubernetes-validate knows only the built-in
kinds). The structural-schema keywords lb's CRD uses (type, properties, required, items,
minItems, pattern, maxLength, enum, minimum) mean the same in JSON Schema; `nullable` and
`x-kubernetes-*` are ignored, as jsonschema ignores unknown keywords.

Usage: validate_custom_resources.py CRD.yaml FILE.yaml...
Prints `ok KIND NAME` or `invalid KIND NAME: at PATH: MESSAGE` per custom resource of the
CRD's kind; exits 1 if any is invalid.
"""

import sys

import jsonschema
import yaml


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main():
    crd_path, files = sys.argv[1], sys.argv[2:]
    crds = [d for d in load_all(crd_path) if d.get("kind") == "CustomResourceDefinition"]
    schemas = {}
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    bad = 0
    for path in files:
        for doc in load_all(path):
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in schemas:
                continue
            name = doc.get("metadata", {}).get("name")
            errors = sorted(
                jsonschema.Draft7Validator(schemas[key]).iter_errors(doc),
                key=lambda e: list(e.absolute_path),
            )
            if errors:
                bad += 1
                for e in errors:
                    where = "/".join(str(p) for p in e.absolute_path)
                    print(f"invalid {key[1]} {name}: at {where}: {e.message}")
            else:
                print(f"ok {key[1]} {name}")
    sys.exit(1 if bad else 0)


main()
