"""``trio-mta init DIR``: a configuration directory of one's own (Haraka's ``haraka -i``),
written from the commented templates shipped in the package: ``trio-mta.toml`` and one
``plugins/<name>.toml`` per built-in plugin. It never overwrites a file."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent  # .../trio_mta


def templates_dir() -> Path:
    """In a wheel: trio_mta/templates; in a source tree: the repository's conf/ (the same
    files: the wheel's build copies them)."""
    for candidate in (_HERE / "templates", _HERE.parent / "conf"):
        if (candidate / "trio-mta.toml").is_file():
            return candidate
    raise FileNotFoundError(f"no configuration templates in {_HERE / 'templates'}")


def template_files() -> list[Path]:
    """Relative paths of every template: trio-mta.toml, then plugins/*.toml."""
    base = templates_dir()
    plugins = sorted(p.relative_to(base) for p in (base / "plugins").glob("*.toml"))
    return [Path("trio-mta.toml"), *plugins]


_VAR_DIR = re.compile(r'^var_dir = ".*"$', re.MULTILINE)


def write_config(target: Path, *, var_dir: str | None = None) -> list[Path]:
    """Write the templates under ``target``; returns the files written.

    Raises:
        FileExistsError: naming every file that already exists (nothing is written).
        OSError: the directory cannot be written.
    """
    base = templates_dir()
    files = template_files()
    existing = [target / f for f in files if (target / f).exists()]
    if existing:
        names = ", ".join(str(p) for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise FileExistsError(f"not overwriting existing files: {names}")
    (target / "plugins").mkdir(parents=True, exist_ok=True)
    written = []
    for name in files:
        text = (base / name).read_text(encoding="utf-8")
        if var_dir is not None and name == Path("trio-mta.toml"):
            text = _VAR_DIR.sub(lambda _m: f"var_dir = {_toml_string(var_dir)}", text, count=1)
        path = target / name
        with path.open("x", encoding="utf-8") as f:  # "x": never over a file made meanwhile
            f.write(text)
        written.append(path)
    return written


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.directory)
    try:
        written = write_config(target, var_dir=args.var_dir)
    except FileExistsError as exc:
        print(f"trio-mta: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"trio-mta: {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files under {target} (trio-mta.toml, plugins/*.toml)")
    print("next:")
    print(f"  trio-mta check --config {target}")
    print(f"  trio-mta passwd --config {target} USER     # a user for the submission ports")
    print(f"  trio-mta run --config {target}")
    return 0


def add_init_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser(
        "init", help="write a commented configuration directory from the shipped templates"
    )
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--var-dir", metavar="DIR", help='[server] var_dir to write (default: "var")')
    init.set_defaults(func=cmd_init)
