"""The README cannot drift: every fenced ```python and ```bash block is checked, and the marked ones are run.

Checks (every block):

- ``python`` blocks compile;
- in ``bash`` blocks, every ``yolo-gradmon <cmd> ...`` parses with the real CLI parser (its subcommand exists and
  its arguments are accepted), ``python -m pytest -m <marker>`` names a registered marker, ``python <script>.py
  --flag`` names an existing script that defines every flag, and ``pip install`` lines are left alone. Any other
  command fails the test, so a new kind of command gets a check here;
- the README's test command is exactly the one ``.ci/run`` runs;
- every repository path the README names (``configs/...``, ``docs/...``, ``benchmarks/...``, ...) exists, and so
  does every relative link in ``docs/*.md``; ``yolo-gradmon`` and ``python benchmarks/...`` commands quoted in
  ``docs/*.md`` are checked like the README's.

Runs: a block preceded by an HTML comment is run, in README order, in one temporary working directory (relative
paths, as a user would), with ``WANDB_MODE=offline`` and its own Ultralytics settings dir (``runs_dir`` inside
that directory, ``datasets_dir`` the copy conftest made):

- ``<!-- test: run -->`` runs the block unchanged;
- ``<!-- test: epochs=1 imgsz=64 ... -->`` runs it with those ``key=value`` pairs: they replace the same keywords
  of a Python ``.train(...)`` call (or are added to it), and replace or are appended to the pairs of
  ``yolo-gradmon train|demo|ablate`` commands. ``pip`` and ``pytest`` lines are never run.

After the runs, the files listed in the README's output table must exist in the first training's ``gradmon/``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")
REPO_PATH = re.compile(r"(?<![\w/<.-])((?:configs|benchmarks|docs|tests|yolo_gradmon|\.ci)/[\w./-]*[\w/])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
INLINE = re.compile(r"`([^`\n]+)`")
RUNNABLE_CLI = ("train", "demo", "ablate", "sweep-run")
OUTPUTS_HEADING = "## What lands in"


# --- parsing ---------------------------------------------------------------------------------------------------


def blocks(text: str) -> list[dict]:
    """Fenced code blocks: language, body, 1-based start line and the ``<!-- test: ... -->`` directive before it."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        d = DIRECTIVE.match(prev)
        out.append({"lang": m.group(1), "body": "\n".join(lines[i + 1 : j]), "line": i + 1,
                    "directive": d.group(1) if d else None})
        i = j + 1
    return out


def commands(body: str) -> list[list[str]]:
    """Shell commands of a bash block: one per line and per ``&&`` segment, comments dropped."""
    out = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in words:
            if w == "&&":
                out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
        if cmd:
            out.append(cmd)
    return [c for c in out if c]


def overrides(directive: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in directive.split()) if directive != "run" else {}


def cli_entry() -> str:
    """``module:function`` of the ``yolo-gradmon`` console script, from pyproject.toml."""
    m = re.search(r'^yolo-gradmon\s*=\s*"([\w.]+:\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m, "pyproject.toml declares no yolo-gradmon script"
    return m.group(1)


def registered_markers() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    section = text[text.index("markers") :]
    return set(re.findall(r'^\s*"(\w+):', section, re.M))


class _Parsed(Exception):
    pass


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``yolo-gradmon argv`` with the real CLI parser, without running the command."""
    import importlib

    mod, func = cli_entry().split(":")
    main = getattr(importlib.import_module(mod), func)
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop):
        try:
            main(argv)
        except _Parsed as p:
            return p.args[0]
        except SystemExit as e:
            raise AssertionError(f"`yolo-gradmon {' '.join(argv)}` does not parse (exit {e.code})") from None
    raise AssertionError(f"`yolo-gradmon {' '.join(argv)}` does not parse (main() returned before its parser accepted it)")


def check_command(cmd: list[str], where: str) -> None:
    """Check one shell command without running it."""
    if cmd[0] == "yolo-gradmon":
        parse_cli(cmd[1:])
    elif cmd[:2] == ["pip", "install"]:
        pass
    elif cmd[:3] == ["python", "-m", "pytest"]:
        for i, w in enumerate(cmd):
            if w == "-m" and i + 1 < len(cmd) and cmd[i + 1] != "pytest":
                assert cmd[i + 1] in registered_markers(), f"{where}: marker {cmd[i + 1]!r} not in pyproject.toml"
    elif cmd[0] == "python" and len(cmd) > 1 and cmd[1].endswith(".py"):
        script = ROOT / cmd[1]
        assert script.is_file(), f"{where}: {cmd[1]} does not exist"
        source = script.read_text()
        for flag in (w for w in cmd[2:] if w.startswith("--")):
            assert f'"{flag}"' in source, f"{where}: {cmd[1]} defines no {flag}"
    else:
        raise AssertionError(f"{where}: no check for the command {shlex.join(cmd)!r}; add one to tests/test_readme.py")


# --- checks ----------------------------------------------------------------------------------------------------


def readme_blocks() -> list[dict]:
    return [b for b in blocks(README.read_text()) if b["lang"] in ("python", "bash")]


def test_readme_has_the_blocks_it_promises():
    langs = [b["lang"] for b in readme_blocks()]
    assert langs.count("python") >= 2 and langs.count("bash") >= 3
    assert any(b["directive"] for b in readme_blocks()), "no README block is run"


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda b: f"{b['lang']}-line{b['line']}")
def test_block_is_valid(block):
    where = f"README.md:{block['line']}"
    if block["lang"] == "python":
        compile(block["body"], where, "exec")
        if block["directive"] and block["directive"] != "run":
            train_call(block["body"], where)  # the overrides need a .train(...) call to apply to
    else:
        for cmd in commands(block["body"]):
            check_command(cmd, where)


def test_readme_test_command_is_what_ci_runs():
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    ci_cmd = next(ln for ln in ci if "pytest" in ln and not ln.startswith("#"))
    lines = [ln.split("  #")[0].strip() for b in readme_blocks() if b["lang"] == "bash" for ln in b["body"].splitlines()]
    assert ci_cmd in lines, f"the README does not show .ci/run's command {ci_cmd!r}"


def test_paths_and_links_exist():
    text = README.read_text()
    missing = [p for p in sorted(set(REPO_PATH.findall(text))) if not (ROOT / p).exists()]
    for doc in [README, *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if "://" not in target and not target.startswith("mailto:") and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, f"paths named in the docs that do not exist: {missing}"


def test_commands_quoted_in_docs_parse():
    """``yolo-gradmon <cmd>`` and ``python benchmarks/...`` in inline code and code blocks of README and docs/."""
    for doc in [README, *sorted(DOCS.glob("*.md"))]:
        text = doc.read_text()
        quoted = INLINE.findall(text) + [ln for b in blocks(text) if b["lang"] in ("bash", "") for ln in b["body"].splitlines()]
        for q in quoted:
            q = q.split("  #")[0].strip()
            if q.startswith("python benchmarks/"):
                check_command(shlex.split(q, comments=True), str(doc.relative_to(ROOT)))
            elif q.startswith("yolo-gradmon ") and "<" not in q and "..." not in q and len(q.split()) > 2:
                parse_cli(shlex.split(q, comments=True)[1:])
            elif q.startswith("yolo-gradmon "):  # a placeholder or a bare subcommand: only the subcommand must exist
                sub = q.split()[1]
                assert sub in cli_subcommands(), f"{doc.name}: `yolo-gradmon {sub}` is not a subcommand"


def cli_subcommands() -> set[str]:
    """The subcommands of the real CLI parser (read from the parser ``main()`` builds)."""
    import importlib

    mod, func = cli_entry().split(":")
    main = getattr(importlib.import_module(mod), func)

    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            main(["--help"])
        except _Parsed as p:
            parser = p.args[0]
        else:
            raise AssertionError("yolo-gradmon's main() did not build its parser")
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


# --- runs ------------------------------------------------------------------------------------------------------


def train_call(body: str, where: str) -> ast.Call:
    calls = [n for n in ast.walk(ast.parse(body)) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "train"]
    assert calls, f"{where}: a block with test overrides has no .train(...) call"
    return calls[0]


def apply_python(body: str, pairs: dict[str, str], where: str) -> str:
    if not pairs:
        return body
    call = train_call(body, where)
    present = {k.arg for k in call.keywords}
    for key, value in pairs.items():
        if key in present:
            body, n = re.subn(rf"\b{key}\s*=\s*[^,)\s]+", f"{key}={value}", body)
            assert n, f"{where}: cannot rewrite {key}="
        else:
            body = re.sub(r"\.train\(", f".train({key}={value}, ", body, count=1)
    return body


def apply_cli(cmd: list[str], pairs: dict[str, str]) -> list[str]:
    if len(cmd) < 2 or cmd[1] not in RUNNABLE_CLI:
        return cmd
    out = [w for w in cmd if w.split("=", 1)[0] not in pairs]
    return out + [f"{k}={v}" for k, v in pairs.items()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, datasets_dir) -> tuple[Path, dict]:
    """A user's working directory and environment: relative paths, offline W&B, own Ultralytics settings."""
    if not (datasets_dir / "coco8" / "images").is_dir():
        pytest.skip("../shared/datasets/coco8 not found")
    cwd = tmp_path_factory.mktemp("readme")
    source = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "settings.json"
    settings = json.loads(source.read_text())
    settings.update(datasets_dir=str(datasets_dir), runs_dir=str(cwd / "runs"), weights_dir=str(cwd / "weights"))
    config_dir = cwd / ".ultralytics-config"
    (config_dir / "Ultralytics").mkdir(parents=True)
    (config_dir / "Ultralytics" / "settings.json").write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # else Ultralytics thinks it is tested
    env.update(YOLO_CONFIG_DIR=str(config_dir), WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(cwd),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"), MPLBACKEND="Agg")
    return cwd, env


def run(args: list[str], cwd: Path, env: dict, where: str) -> None:
    t = time.perf_counter()
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    print(f"{where}: {time.perf_counter() - t:.1f} s  {shlex.join(args)[:120]}")
    assert r.returncode == 0, f"{where} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"


def test_marked_blocks_run(workdir):
    cwd, env = workdir
    mod, func = cli_entry().split(":")
    cli = [sys.executable, "-c", f"import sys; from {mod} import {func} as main; sys.exit(main())"]
    ran = 0
    for block in readme_blocks():
        if not block["directive"]:
            continue
        where = f"README.md:{block['line']}"
        pairs = overrides(block["directive"])
        if block["lang"] == "python":
            run([sys.executable, "-c", apply_python(block["body"], pairs, where)], cwd, env, where)
            ran += 1
            continue
        for cmd in commands(block["body"]):
            if cmd[0] != "yolo-gradmon":
                continue  # pip / pytest: checked by test_block_is_valid, never run here
            run(cli + apply_cli(cmd, pairs)[1:], cwd, env, where)
            ran += 1
    assert ran >= 4

    # the output table: every file it lists exists in the first training's gradmon dir (report has run on it)
    text = README.read_text()
    table = text[text.index(OUTPUTS_HEADING) :].split("\n## ")[0]
    listed = [f for row in table.splitlines() if row.startswith("| `") for f in INLINE.findall(row.split("|")[1])]
    assert "gradients.jsonl" in listed
    gradmon = cwd / "runs" / "detect" / "train" / "gradmon"
    missing = [f for f in listed if not (gradmon / f).is_file()]
    assert not missing, f"README output table lists files not in {gradmon}: {missing}"
