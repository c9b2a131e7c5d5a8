"""DVC stage ``resolve_params``: params.yaml with its preset applied, the file the stages' params deps name.

Each later stage depends on the keys it reads *after* the preset is resolved
(``results/resolved_params.yaml: [train, model, ...]`` in dvc.yaml), not on params.yaml's
``presets`` block: editing a preset that is not active re-runs this stage alone, which
writes the same file, and nothing downstream; a value the active preset overrides is tracked
where it takes effect.
"""

from __future__ import annotations

import sys

import yaml

from ouroboros3d.config import RESOLVED_PARAMS, load_params, resolved_params
from ouroboros3d.errors import ArgumentParser, guard
from ouroboros3d.files import atomic_write_text

HEADER = "# params.yaml with its preset applied, written by experiments/resolve_params.py: do not edit\n"


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=RESOLVED_PARAMS)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    atomic_write_text(
        args.out, HEADER + yaml.safe_dump(resolved_params(params), sort_keys=False, default_flow_style=None)
    )
    print(f"{args.out}: params.yaml with preset {params.preset!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
