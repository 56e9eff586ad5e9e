"""``avatarcam weights list | add PATH | download NAME | verify``."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from avatarcam.errors import AvatarcamError


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", dest="weights_dir", metavar="DIR",
                        help="weights folder (default: $AVATARCAM_WEIGHTS, else ./weights in a source checkout, "
                        "else the user data folder)")
    sub = parser.add_subparsers(dest="weights_command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="known and installed checkpoints")
    add = sub.add_parser("add", help="import a checkpoint file (check keys, store a slim copy)")
    add.add_argument("path", metavar="PATH", help="a FOMM checkpoint, e.g. vox-adv-cpk.pth.tar")
    add.add_argument("--name", help="name to store it under (default: from the file name)")
    add.add_argument("--config", help="FOMM YAML: vox-256.yaml, vox-adv-256.yaml or a path (default: from the name)")
    add.add_argument("--fp16", action="store_true", help="store floats as fp16 (half the size)")
    add.add_argument("--force", action="store_true", help="replace an existing copy of the same name")
    dl = sub.add_parser("download", help="download a known checkpoint, verified by sha256")
    dl.add_argument("name", metavar="NAME", help="e.g. vox-cpk (see `avatarcam weights list`)")
    dl.add_argument("--allow-unverified", action="store_true",
                    help="accept a file that has no published sha256 to check against")
    dl.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    sub.add_parser("verify", help="re-hash every installed checkpoint and compare it with its record")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``weights`` command to a parent CLI's subparsers; its handler is ``args.func = run``."""
    parser = subparsers.add_parser("weights", help="list, download, add and verify FOMM checkpoints",
                                   description=__doc__)
    _configure(parser)
    parser.set_defaults(func=run)
    return parser


def _mb(n: int | None) -> str:
    return f"{n / 1e6:,.1f} MB" if n else "?"


def _list(directory: str | None) -> int:
    from avatarcam.weights.registry import REGISTRY
    from avatarcam.weights.store import installed, weights_dir

    d = weights_dir(directory)
    have = installed(d)
    print(f"weights folder: {d}")
    print("downloadable:")
    for spec in REGISTRY.values():
        mark = "installed" if any(i.path == d / spec.filename for i in have) else "-"
        check = "sha256" if spec.verifiable else "unverified (needs --allow-unverified)"
        print(f"  {spec.name:<22} {mark:<10} {_mb(spec.size):>10}  {spec.config:<17} {check}")
        print(f"  {'':<22} licence: {spec.licence}")
    slims = [i for i in have if i.kind == "slim"]
    print("added (slim copies):" if slims else "added (slim copies): none; see `avatarcam weights add PATH`")
    for i in slims:
        print(f"  {i.name:<22} {(i.meta or {}).get('dtype', '?'):<10} {_mb(i.size):>10}  {i.config}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``weights`` command. Returns the exit code; errors raise :class:`AvatarcamError`."""
    cmd, directory = args.weights_command, args.weights_dir
    if cmd == "list":
        return _list(directory)
    if cmd == "add":
        from avatarcam.weights.add import add_checkpoint

        path = add_checkpoint(args.path, name=args.name, config=args.config, fp16=args.fp16,
                              directory=directory, overwrite=args.force)
        print(f"added {args.path} as {path} ({_mb(path.stat().st_size)})")
        return 0
    if cmd == "download":
        from avatarcam.weights.download import download
        from avatarcam.weights.registry import get_spec

        spec = get_spec(args.name)
        print(f"{spec.name}: licence {spec.licence}", file=sys.stderr)
        path = download(spec, directory=directory, allow_unverified=args.allow_unverified, progress=args.progress)
        print(f"{spec.name} installed: {path}")
        return 0
    if cmd == "verify":
        from avatarcam.weights.store import verify, weights_dir

        results = verify(directory)
        if not results:
            print(f"nothing installed in {weights_dir(directory)}")
        for item, ok, detail in results:
            print(f"{'OK  ' if ok else 'FAIL'} {item.name:<22} {item.path.name}: {detail}")
        return 0 if all(ok for _, ok, _ in results) else 1
    raise AssertionError(f"unhandled weights command {cmd!r}")  # argparse only allows the above


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m avatarcam.weights.cli``); prints user errors without a traceback."""
    parser = argparse.ArgumentParser(prog="avatarcam weights", description=__doc__)
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except AvatarcamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; a partial download is kept and resumes next time", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
