"""Mutation-testing benchmark of the daemon's control paths and the engine's gates (mutmut 2.x).

Mutates, one mutant at a time, only the functions listed in SCOPE below (not whole files), runs for each
mutant only the tests that execute the mutated statement, and prints per file and in total: mutants in scope,
tested, killed, timeout, survived, kill rate = (killed + timeout) / tested, plus every survivor as
file:line, function and the diff line.

    python3 bench/bench_mutation.py /tmp/mut/main                      # all ~520 in-scope mutants (hours)
    python3 bench/bench_mutation.py /tmp/mut/main --max-mutants 110    # seeded sample: ~40 min on 2 busy cores
    python3 bench/bench_mutation.py /tmp/mut/main --estimate           # coverage run + cost estimate only
    python3 bench/bench_mutation.py /tmp/mut/main --max-mutants 110 --no-sync --resume   # finish an interrupted run

Figures, and what each surviving mutant means: docs/mutation-testing.md.

The tree this script is run from is only read. Everything happens in CLONE (created with `git clone` when
missing; else reset to this tree's HEAD): the working tree's uncommitted and untracked files are copied over it,
its venv is made with .ci/setup.sh when missing (or with --setup), mutmut<3 and coverage are installed into that
venv only, and mutmut edits CLONE's files in place. Needs git and mosquitto (the daemon tests start brokers).

Why mutmut 2.x: it mutates the files in place and runs a shell command per mutant, so the editable install of
CLONE (setuptools package-dir mapping: linesight.daemon = daemon/) imports the mutant as is; mutmut 3 copies the
tree into mutants/ and rewrites imports, which does not follow that mapping. Its `pre_mutation` hook is what
restricts mutants to the functions in SCOPE and picks each mutant's command.

How the tests are chosen (who-tests-what, as mutmut 3 does with its own tracer): mutmut's baseline run is one
run of UNIVERSE under coverage.py with one coverage context per test (daemon subprocesses started by tests are
measured too, through a .pth file in CLONE's venv and the test's id in the environment). A mutant then runs
`pytest -x` on the tests that executed its statement (its header, for if/while/with/for), fastest module
first, with a timeout of 30 s + 3x their baseline time. A statement no test executed is reported as survived
("no test") without running anything. Lines that run at import (in-process tests import at collection, outside
any test) get: a def line (default arguments) the tests of its function; a class-level line (pydantic fields)
every test that runs code of the file's scope items. Outcomes: pytest exit 0 = survived; 1, or 2/3, or 4 with
"found no collectors" (the mutant broke collection: an import error) = killed; killed by the timeout = timeout;
any other exit (a runner problem, not the mutant's doing) = error, left out of the rate. A kill whose output
says "Address already in use" is run once more (tests bind fixed ports another test run on the machine may
hold). Tests that fail in the baseline are run once more; those failing twice are left out (and listed).

One shortcut: the session fixture `small_bundle` fits a model (8 s, torch). Within one benchmark run it is
fitted once from the unmutated code (during the baseline) and copied for every later test session; no mutated
function is part of fitting except bundle loading, which every test that uses the bundle exercises again.

Results: printed, and written as JSON to CLONE/.mutbench/results.json (per-mutant records in
CLONE/.mutbench/mutants.jsonl). --max-mutants picks a seeded sample, stratified by file in proportion to its
mutants; the total's 95 % interval (Wilson) is printed with it. --budget-min records the mutants still waiting
when the time is up as "not run" (mutmut goes file by file, so a cut-off run under-samples the last files).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

# file -> qualified names in scope: "Class" (the whole class), "Class.method", "function" or a module-level name
SCOPE: dict[str, list[str]] = {
    "daemon/pipeline.py": [f"Pipeline.{m}" for m in (
        "_emit", "admit", "_part_id", "acquire_loop", "_frame_problem", "process", "request_reload", "_reload",
        "warn_model", "reload_loop", "run", "alarm_limited")],
    "daemon/model.py": ["ModelHolder.load", "ModelHolder.rollback", "ModelHolder.changed"],
    "daemon/commands.py": ["Command", "Reload", "Pause", "Resume", "Feedback", "Part", "MODELS", "Dispatcher"],
    "daemon/identity.py": ["SeqStore"],
    "daemon/service.py": [f"Service.{m}" for m in (
        "_cmd_reload", "_cmd_pause", "_cmd_resume", "health", "_archive_loop", "_drain_archive", "shutdown")],
    "export/engine.py": ["Engine.check_golden"],
    "export/bundle.py": ["_read_files", "load_bundle", "_load"],
}
# every test file that exercises these functions (in process or through a `linesight run` subprocess)
UNIVERSE = ["tests/test_pipeline.py", "tests/test_identity.py", "tests/test_commands.py",
            "tests/test_daemon_threads.py", "tests/test_daemon.py", "tests/test_daemon_archive.py",
            "tests/test_frame_limits.py", "tests/test_bundle_engine.py", "tests/test_data_safety.py",
            "tests/test_preflight.py", "tests/test_broker_acl.py", "tests/test_consumer_freshness.py",
            "tests/test_gates.py", "tests/test_type_classifier.py", "tests/test_verdict_schema.py"]
TOOL = "mutmut<3"
WORK = ".mutbench"  # CLONE/.mutbench: helpers, coverage data, logs, results

# ------------------------------------------------------------------------------------------------ helpers (CLONE)
# Written into CLONE/.mutbench and run by CLONE's venv; they read CLONE/.mutbench/config.json.

PLUGIN = r'''
"""pytest plugin (-p mutbench_plugin): fit cache for `small_bundle`; per-test coverage contexts + durations."""
import hashlib, json, os, shutil, sys, time, types
from pathlib import Path

import pytest

CACHE = os.environ.get("MUTBENCH_FITCACHE")
COVER = os.environ.get("MUTBENCH_COVERAGE") == "1"
_durations = {}
_failed = set()


def _key(dataset, cfg):
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for p in sorted(Path(dataset).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(dataset)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:24]


def _cached_fit(real_module):
    def fit(dataset, out, cfg, *args, **kwargs):
        if args or kwargs:
            return real_module().fit(dataset, out, cfg, *args, **kwargs)
        hit = Path(CACHE) / _key(dataset, cfg)
        if hit.is_dir():
            shutil.copytree(hit, out)
            return None
        result = real_module().fit(dataset, out, cfg)
        tmp = Path(str(hit) + f".{os.getpid()}.tmp")
        shutil.copytree(out, tmp)
        os.replace(tmp, hit)
        return result
    return fit


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if not CACHE or fixturedef.argname != "small_bundle":
        return (yield)
    name = "linesight.trainer.fit"
    saved = sys.modules.get(name)

    def real_module():
        if saved is not None:
            return saved
        sys.modules.pop(name, None)
        import importlib
        return importlib.import_module(name)

    fake = types.ModuleType(name)
    fake.fit = _cached_fit(real_module)
    sys.modules[name] = fake
    try:
        return (yield)
    finally:
        if saved is not None:
            sys.modules[name] = saved
        elif sys.modules.get(name) is fake:
            del sys.modules[name]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not COVER:
        return (yield)
    import coverage
    cov = coverage.Coverage.current()
    os.environ["MUTBENCH_CONTEXT"] = item.nodeid
    if cov is not None:
        cov.switch_context(item.nodeid)
    t0 = time.monotonic()
    try:
        return (yield)
    finally:
        _durations[item.nodeid] = _durations.get(item.nodeid, 0.0) + time.monotonic() - t0
        os.environ.pop("MUTBENCH_CONTEXT", None)
        if cov is not None:
            cov.switch_context("")


def pytest_runtest_logreport(report):
    if COVER and report.failed:
        _failed.add(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if COVER:
        Path(os.environ["MUTBENCH_DURATIONS"]).write_text(json.dumps(_durations, indent=0))
        Path(os.environ["MUTBENCH_FAILED"]).write_text(json.dumps(sorted(_failed)))
'''

RUNNER = r'''
"""mutmut's runner. --baseline: UNIVERSE under coverage -> tests_by_line.json. Else: one mutant's tests."""
import argparse, ast, difflib, json, os, signal, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CFG = json.loads((HERE / "config.json").read_text())


def env(**extra):
    e = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MUTBENCH_FITCACHE": str(HERE / "fitcache"),
         "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    e.update(extra)
    return e


def pytest_cmd(tests, *opts):
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutbench_plugin", *opts, *tests]


def run_group(cmd, environ, timeout):
    """Run in its own process group; everything left in it (brokers, daemons) is killed afterwards."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return rc, out.decode(errors="replace")


# ------------------------------------------------------------------------ baseline: who tests what
def units(fn_node):
    """(first, last, kind) of every statement of a function: simple statements whole, compound ones by header."""
    out = []
    for node in ast.walk(fn_node):
        if node is fn_node:
            continue
        if isinstance(node, ast.ExceptHandler):
            out.append((node.lineno, node.body[0].lineno - 1 if node.body[0].lineno > node.lineno else node.lineno))
        elif isinstance(node, ast.stmt):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                out.append((first, max(first, body[0].lineno - 1)))
            else:
                out.append((node.lineno, node.end_lineno))
    return out


def who_tests_what(data, broken):
    """file -> {line: [test ids]} for every line of every scope item; None = no test executed the statement.
    Tests in `broken` (failing without any mutant) are left out."""
    result = {}
    for rel, items in CFG["scope"].items():
        path = str(ROOT / rel)
        ctx = {ln: {c for c in cs if c and c not in broken} for ln, cs in (data.contexts_by_lineno(path) or {}).items()}
        tree = ast.parse((ROOT / rel).read_text())
        file_union = set()
        lines = {}
        for first, last, qual in items:
            node = node_at(tree, first, last)
            item_union = set().union(*(ctx.get(ln, set()) for ln in range(first, last + 1)))
            file_union |= item_union
            fns = [n for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            body_unit = {}  # line -> (size, tests) of the smallest statement unit inside a function body
            for fn in fns:
                for a, b in units(fn):
                    tests = set().union(*(ctx.get(ln, set()) for ln in range(a, b + 1)))
                    for ln in range(a, b + 1):
                        if ln not in body_unit or body_unit[ln][0] > b - a:
                            body_unit[ln] = (b - a, tests)
            for ln in range(first, last + 1):
                if ln in body_unit:
                    lines[ln] = ("unit", body_unit[ln][1])
                else:  # def lines (defaults), class bodies: they run at import, which for in-process tests is
                    # collection (no test context): the tests of the function, or for a class-level line (a
                    # pydantic field) every test that runs code of the file's scope items
                    fn_of = [f for f in fns if f.lineno <= ln <= f.end_lineno]
                    if fn_of:
                        owner = min(fn_of, key=lambda f: f.end_lineno - f.lineno)
                        own = set().union(*(ctx.get(x, set()) for x in range(owner.lineno, owner.end_lineno + 1)))
                        lines[ln] = ("def", own)
                    else:
                        lines[ln] = ("class", ctx.get(ln, set()))
        for ln, (kind, tests) in lines.items():
            if kind == "class":
                tests = tests | file_union
            lines[ln] = sorted(tests) if tests or kind != "unit" else None
        result[rel] = lines
    return result


def node_at(tree, first, last):
    """The scope item's AST node, found by the span the host computed from this same source (scope_ranges)."""
    for n in ast.walk(tree):
        if getattr(n, "end_lineno", None) == last and min(
                [getattr(n, "lineno", -1)] + [d.lineno for d in getattr(n, "decorator_list", [])]) == first:
            return n
    raise SystemExit(f"scope: no statement spans lines {first}-{last}")


def baseline():
    import coverage
    covdir = HERE / "cov"
    rc_file = HERE / "coveragerc"
    env_cov = env(MUTBENCH_COVERAGE="1", COVERAGE_PROCESS_START=str(rc_file),
                  MUTBENCH_DURATIONS=str(HERE / "durations.json"), MUTBENCH_FAILED=str(HERE / "broken.json"))
    t0 = time.monotonic()
    rc, out = run_group(pytest_cmd(CFG["universe"]), env_cov, CFG["baseline_timeout_s"])
    (HERE / "baseline.log").write_text(out)
    print(out[-3000:], flush=True)
    broken = set(json.loads((HERE / "broken.json").read_text())) if rc in (0, 1) else set()
    n_tests = len(json.loads((HERE / "durations.json").read_text())) if rc in (0, 1) else 0
    if broken and len(broken) <= max(3, n_tests // 10):  # once more, alone: a port another run held, a flake
        first = json.loads((HERE / "durations.json").read_text())
        env_again = {**env_cov, "MUTBENCH_DURATIONS": str(HERE / "durations2.json")}
        rc2, out2 = run_group(pytest_cmd(sorted(broken)), env_again, CFG["baseline_timeout_s"])
        (HERE / "baseline-rerun.log").write_text(out2)
        if rc2 in (0, 1):
            broken = set(json.loads((HERE / "broken.json").read_text()))
            first.update(json.loads((HERE / "durations2.json").read_text()))
            (HERE / "durations.json").write_text(json.dumps(first, indent=0))
            rc = 0 if not broken else 1
    # a working tree being edited may carry a few failing tests; they are left out of every mutant's run (and
    # reported), since a test that fails anyway cannot tell a mutant apart. Many failures: something is wrong.
    if rc not in (0, 1) or (rc == 1 and not broken) or len(broken) > max(3, n_tests // 10):
        print(f"baseline: pytest rc={rc}, {len(broken)} failing tests: the tests must pass unmutated "
              f"(see {HERE / 'baseline.log'})", flush=True)
        return 1
    cov = coverage.Coverage(config_file=str(rc_file))
    cov.combine(data_paths=[str(covdir)])
    cov.save()
    data = cov.get_data()
    mapping = who_tests_what(data, broken)
    (HERE / "tests_by_line.json").write_text(json.dumps(mapping))
    print(f"baseline: {time.monotonic() - t0:.0f} s, coverage contexts: {len(data.measured_contexts())}", flush=True)
    return 0


# ------------------------------------------------------------------------ one mutant
def mutant(a):
    mapping = json.loads((HERE / "tests_by_line.json").read_text())
    durations = json.loads((HERE / "durations.json").read_text())
    line = a.line0 + 1
    rec = {"file": a.file, "line": line, "index": a.index, "func": a.func}
    if CFG.get("deadline") and time.time() > CFG["deadline"]:  # --budget-min spent: recorded, not run
        rec.update(outcome="not_run", seconds=0.0)
        with open(HERE / "mutants.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        return 0
    bak = ROOT / (a.file + ".bak")
    if bak.exists():
        diff = [d for d in difflib.unified_diff(bak.read_text().splitlines(), (ROOT / a.file).read_text().splitlines(),
                                                lineterm="", n=0) if d[:1] in "+-" and d[:3] not in ("+++", "---")]
        rec["diff"] = diff
    tests = mapping[a.file].get(str(line))
    t0 = time.monotonic()
    if not tests:
        rec.update(outcome="survived", why="no test executes this statement" if tests is None else "no test found",
                   tests=0, seconds=0.0)
    else:
        mods = {}
        for t in tests:
            mods.setdefault(t.split("::")[0], []).append(t)
        groups = sorted(mods.values(), key=lambda g: min(durations.get(t, 1e9) for t in g))
        ordered = [t for g in groups for t in sorted(g, key=lambda t: durations.get(t, 1e9))]
        budget = CFG["timeout_base_s"] + CFG["timeout_factor"] * sum(durations.get(t, 10.0) for t in ordered)
        rc, out = run_group(pytest_cmd(ordered, "-x"), env(), budget)
        if rc == 1 and "Address already in use" in out:  # a fixed port (zmq 5556) held by another test run on
            time.sleep(5)                                 # this machine: once more; a mutant's own clash repeats
            rc, out = run_group(pytest_cmd(ordered, "-x"), env(), budget)
            rec["retried"] = True
        if rc == 4 and "found no collectors" in out:  # the baseline collected these ids: the mutant broke
            rc = 2                                      # collection (an import error), which is a kill
        outcome = {0: "survived", 1: "killed", 2: "killed", 3: "killed", None: "timeout"}.get(rc, "error")
        rec.update(outcome=outcome, rc=rc, tests=len(ordered), timeout_s=round(budget, 1))
        if outcome == "killed":
            failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in out.splitlines()
                      if ln.startswith(("FAILED tests/", "ERROR tests/"))]
            rec["by"] = failed[:1]
        if outcome == "error":
            rec["output"] = out[-1500:]
    rec["seconds"] = round(time.monotonic() - t0, 2)
    with open(HERE / "mutants.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    print(json.dumps({k: rec[k] for k in ("file", "line", "outcome", "tests", "seconds")}), flush=True)
    return 0 if rec["outcome"] == "survived" else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--file")
    ap.add_argument("--line0", type=int)
    ap.add_argument("--index", type=int)
    ap.add_argument("--func")
    a = ap.parse_args()
    sys.exit(baseline() if a.baseline else mutant(a))
'''

ENUMERATE = r'''
"""List mutmut's mutation ids in every SCOPE file (its own enumeration) and keep those inside scope items."""
import json, sys
from pathlib import Path

from mutmut import ALL, Context, list_mutations

HERE = Path(__file__).resolve().parent
CFG = json.loads((HERE / "config.json").read_text())
found = []
for rel, items in CFG["scope"].items():
    source = (HERE.parent / rel).read_text()
    ctx = Context(source=source, filename=rel, mutation_id=ALL, dict_synonyms=[])
    for mid in list_mutations(ctx):
        line = mid.line_number + 1
        owner = [q for a, b, q in items if a <= line <= b]
        if owner:
            found.append({"file": rel, "line0": mid.line_number, "index": mid.index, "func": owner[0],
                          "source": mid.line.strip()})
json.dump(found, sys.stdout)
'''

MUTMUT_CONFIG = r'''
"""mutmut 2 hook (CLONE/mutmut_config.py, written by bench/bench_mutation.py): only planned mutants run."""
import json
import shlex
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent / ".mutbench"
_PLAN = None


def pre_mutation(context):
    global _PLAN
    if _PLAN is None:
        _PLAN = {(m["file"], m["line0"], m["index"]): m for m in json.loads((_HERE / "plan.json").read_text())}
    mid = context.mutation_id
    m = _PLAN.get((context.filename, mid.line_number, mid.index))
    if m is None:
        context.skip = True
        return
    context.config.test_command = " ".join(shlex.quote(x) for x in [
        sys.executable, str(_HERE / "runner.py"), "--file", m["file"], "--line0", str(m["line0"]),
        "--index", str(m["index"]), "--func", m["func"]])
'''


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


def git(repo: Path, *args: str) -> str:
    return sh(["git", "-C", str(repo), *args], capture_output=True).stdout


def sync(source: Path, clone: Path) -> None:
    """CLONE = SOURCE's HEAD + its uncommitted and untracked (not ignored) files. SOURCE is only read."""
    marker = clone / ".git" / "mutbench-clone"  # reset --hard/clean below: only in a clone this script made
    if not (clone / ".git").is_dir():
        if clone.exists() and any(clone.iterdir()):
            raise SystemExit(f"{clone} exists and is not a clone made by this script: pick a new folder")
        clone.parent.mkdir(parents=True, exist_ok=True)
        sh(["git", "clone", "-q", str(source), str(clone)])
        marker.write_text("made by bench/bench_mutation.py\n")
    elif not marker.exists():
        raise SystemExit(f"{clone} is a git tree this script did not make; it resets and cleans its clone, "
                         "so pick a new folder")
    git(clone, "fetch", "-q", str(source), "HEAD")
    git(clone, "reset", "-q", "--hard", "FETCH_HEAD")
    git(clone, "clean", "-fdq")  # untracked copies of an earlier sync; .venv is ignored, so kept
    changed = [f for f in git(source, "ls-files", "-m", "-o", "--exclude-standard", "-z").split("\0") if f]
    for rel in changed:
        if rel.startswith("build/"):
            continue
        src, dst = source / rel, clone / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif not src.exists() and (dst.exists() or dst.is_symlink()):
            dst.unlink()  # deleted in the working tree
    # the tests read the real data from ../shared: without it most of them skip and cover nothing
    shared, theirs = clone.parent / "shared", (source / ".." / "shared").resolve()
    if not shared.exists() and theirs.is_dir():
        shared.symlink_to(theirs)
        print(f"linked {shared} -> {theirs} (the tests' data)", flush=True)
    if not shared.exists():
        raise SystemExit(f"{shared} is missing: the tests need the real data there (link it to ../shared)")
    exclude = clone / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    want = [f"/{WORK}/", "/mutmut_config.py", "/.mutmut-cache", "*.py.bak"]
    exclude.write_text("\n".join(lines + [w for w in want if w not in lines]) + "\n")


def ensure_venv(clone: Path, force_setup: bool) -> Path:
    py = clone / ".venv" / "bin" / "python"
    if force_setup or not py.exists():
        print(f"setup: bash .ci/setup.sh in {clone}", flush=True)
        sh(["bash", ".ci/setup.sh"], cwd=clone)
    for module, req in (("mutmut", TOOL), ("coverage", "coverage>=7")):
        if subprocess.run([str(py), "-c", f"import {module}"], check=False, capture_output=True).returncode:
            sh([str(py), "-m", "pip", "install", "-q", req], cwd=clone)
    # subprocesses of the tests (`linesight run`) are measured when COVERAGE_PROCESS_START is set (baseline only)
    # (coverage >= 7.7 installs its own a1_coverage.pth for that; older ones get this one)
    purelib = Path(sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                      capture_output=True).stdout.strip())
    ours = purelib / "mutbench_coverage.pth"
    if any(p != ours for p in purelib.glob("*coverage*.pth")):
        ours.unlink(missing_ok=True)
    else:
        ours.write_text("import os; os.environ.get('COVERAGE_PROCESS_START') and "
                        "__import__('coverage').process_startup()\n")
    return py


def scope_ranges(clone: Path) -> dict[str, list[tuple[int, int, str]]]:
    """file -> (first line incl. decorators, last line, qualname) of every SCOPE item, from the clone's source."""
    out: dict[str, list[tuple[int, int, str]]] = {}
    for rel, quals in SCOPE.items():
        tree = ast.parse((clone / rel).read_text())
        items = []
        for qual in quals:
            node: ast.AST = tree
            for part in qual.split("."):
                for child in getattr(node, "body", []):
                    names = {getattr(child, "name", None),
                             *(getattr(t, "id", None) for t in getattr(child, "targets", []))}
                    if isinstance(child, ast.AnnAssign):
                        names.add(getattr(child.target, "id", None))
                    if part in names:
                        node = child
                        break
                else:
                    raise SystemExit(f"{rel}: {qual} not found (SCOPE is out of date)")
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            items.append((first, node.end_lineno, qual))
        out[rel] = items
    return out


def write_helpers(clone: Path, config: dict) -> Path:
    work = clone / WORK
    if work.exists():
        shutil.rmtree(work)
    (work / "cov").mkdir(parents=True)
    (work / "fitcache").mkdir()
    (work / "config.json").write_text(json.dumps(config, indent=1))
    for name, text in (("mutbench_plugin.py", PLUGIN), ("runner.py", RUNNER), ("enumerate.py", ENUMERATE)):
        (work / name).write_text(textwrap.dedent(text).lstrip())
    (clone / "mutmut_config.py").write_text(MUTMUT_CONFIG.lstrip())
    (work / "coveragerc").write_text("\n".join([
        "[run]", "parallel = true", f"data_file = {work / 'cov' / '.coverage'}", "context = ${MUTBENCH_CONTEXT}",
        "sigterm = true", "disable_warnings = no-data-collected, module-not-imported, module-not-measured, no-ctracer",
        "include =", *(f"    {clone / rel}" for rel in SCOPE)]) + "\n")
    baks = [p for d in ("daemon", "export") for p in (clone / d).rglob("*.py.bak")]
    for p in (clone / ".mutmut-cache", *baks):
        p.unlink(missing_ok=True)
    for d in ("daemon", "export"):  # stale bytecode could outlive a same-size mutant written in the same second
        for cache in (clone / d).rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
    return work


def plan(py: Path, work: Path, max_mutants: int, seed: int, done: set) -> tuple[list[dict], list[dict]]:
    found = json.loads(sh([str(py), str(work / "enumerate.py")], capture_output=True, cwd=work.parent).stdout)
    chosen = found
    if max_mutants and len(found) > max_mutants:
        # stratified by file, proportional (largest remainder): the sample's rate estimates the whole scope's
        by_file: dict[str, list[dict]] = {}
        for m in sorted(found, key=lambda m: (m["file"], m["line0"], m["index"])):
            by_file.setdefault(m["file"], []).append(m)
        quota = {f: max_mutants * len(ms) / len(found) for f, ms in by_file.items()}
        take = {f: int(q) for f, q in quota.items()}
        for f in sorted(quota, key=lambda f: (int(quota[f]) - quota[f], f))[:max_mutants - sum(take.values())]:
            take[f] += 1
        rng = random.Random(seed)
        chosen = sorted((m for f, ms in by_file.items() for m in rng.sample(ms, take[f])),
                        key=lambda m: (m["file"], m["line0"], m["index"]))
    todo = [m for m in chosen if (m["file"], m["line0"] + 1, m["index"]) not in done]
    (work / "plan.json").write_text(json.dumps(todo))
    return found, chosen


def estimate(work: Path, chosen: list[dict], cfg: dict) -> None:
    mapping = json.loads((work / "tests_by_line.json").read_text())
    durations = json.loads((work / "durations.json").read_text())
    total, uncovered = 0.0, 0
    for m in chosen:
        tests = mapping[m["file"]].get(str(m["line0"] + 1))
        if not tests:
            uncovered += 1
            continue
        total += 4.0 + sum(durations.get(t, 10.0) for t in tests)
    print(f"estimate: {len(chosen)} mutants, {uncovered} on statements no test executes; upper bound (every "
          f"mutant survives, baseline test times) {total / 60:.0f} min", flush=True)


def report(work: Path, found: list[dict], chosen: list[dict], wall_s: float, tool: str, cmd: str) -> dict:
    recs = {}
    log = work / "mutants.jsonl"
    for line in (log.read_text().splitlines() if log.exists() else []):
        r = json.loads(line)
        recs[(r["file"], r["line"], r["index"])] = r
    rows = {}
    for f in SCOPE:
        rows[f] = {"in_scope": sum(m["file"] == f for m in found), "tested": 0, "killed": 0, "timeout": 0,
                   "survived": 0, "error": 0, "not_run": 0}
    for m in chosen:
        r = recs.get((m["file"], m["line0"] + 1, m["index"]))
        row = rows[m["file"]]
        if r is None:
            row["not_run"] += 1
            continue
        row[r["outcome"]] += 1
        if r["outcome"] in ("killed", "timeout", "survived"):
            row["tested"] += 1
    total = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}

    def rate(r: dict) -> str:
        return f"{100 * (r['killed'] + r['timeout']) / r['tested']:.1f} %" if r["tested"] else "-"

    def wilson(r: dict, z: float = 1.96) -> str:
        n = r["tested"]
        if not n:
            return "-"
        p = (r["killed"] + r["timeout"]) / n
        mid = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
        return f"{100 * (mid - half):.0f}-{100 * (mid + half):.0f} %"

    print(f"\nmutation benchmark: {tool}; {len(chosen)} of {len(found)} in-scope mutants run; "
          f"wall {wall_s / 60:.1f} min")
    head = (f"{'file':22} {'in scope':>8} {'tested':>6} {'killed':>6} {'timeout':>7} {'survived':>8} {'error':>5} "
            f"{'not run':>7} {'kill rate':>9} {'95 % CI':>9}")
    print(head)
    for f, r in [*rows.items(), ("TOTAL", total)]:
        print(f"{f:22} {r['in_scope']:8d} {r['tested']:6d} {r['killed']:6d} {r['timeout']:7d} {r['survived']:8d} "
              f"{r['error']:5d} {r['not_run']:7d} {rate(r):>9} {wilson(r):>9}")
    survivors = sorted((r for r in recs.values() if r["outcome"] == "survived"), key=lambda r: (r["file"], r["line"]))
    print(f"\nsurvivors ({len(survivors)}):")
    for r in survivors:
        note = f"  [{r['why']}]" if r.get("why") else f"  [{r.get('tests', 0)} tests ran]"
        print(f"  {r['file']}:{r['line']}  {r['func']}{note}")
        for d in r.get("diff", []):
            print(f"      {d.strip()[:150]}")
    broken_file = work / "broken.json"
    broken = json.loads(broken_file.read_text()) if broken_file.exists() else []
    if broken:
        print(f"\nleft out: {len(broken)} tests failing without any mutant (working tree being edited):")
        for t in broken:
            print(f"  {t}")
    errors = [r for r in recs.values() if r["outcome"] == "error"]
    for r in errors:
        print(f"  error {r['file']}:{r['line']} rc={r.get('rc')}: {r.get('output', '')[-300:]}")
    result = {"tool": tool, "command": cmd, "wall_s": round(wall_s), "per_file": rows, "total": total,
              "kill_rate": rate(total), "kill_rate_ci95": wilson(total), "survivors": survivors, "errors": errors,
              "left_out_tests": broken}
    (work / "results.json").write_text(json.dumps(result, indent=1))
    print(f"\nresults: {work / 'results.json'}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clone", type=Path, help="working copy to mutate (created with git clone when missing)")
    ap.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1],
                    help="tree to copy from, only read (default: the one holding this script)")
    ap.add_argument("--max-mutants", type=int, default=0, help="seeded sample of this many in-scope mutants (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--setup", action="store_true", help="run .ci/setup.sh in the clone even if its venv exists")
    ap.add_argument("--no-sync", action="store_true", help="use the clone as it is")
    ap.add_argument("--estimate", action="store_true", help="baseline (coverage) run and cost estimate only")
    ap.add_argument("--resume", action="store_true", help="keep CLONE/.mutbench/mutants.jsonl and run only the planned "
                    "mutants it has no record of (use with --no-sync and the same --max-mutants/--seed)")
    ap.add_argument("--budget-min", type=float, default=0,
                    help="after this many minutes (whole run) the remaining mutants are recorded as not run")
    ap.add_argument("--timeout-base", type=float, default=30.0, help="per-mutant timeout: base seconds ...")
    ap.add_argument("--timeout-factor", type=float, default=3.0, help="... plus this times the tests' baseline time")
    a = ap.parse_args()
    source, clone = a.source.resolve(), a.clone.resolve()
    if clone == source or source in clone.parents or clone in source.parents:
        raise SystemExit("the clone must be a separate tree, not inside or around the source (mutmut edits it)")
    t0 = time.monotonic()
    if not a.no_sync:
        sync(source, clone)
    py = ensure_venv(clone, a.setup)
    tool = "mutmut " + sh([str(py), "-c", "import importlib.metadata as m; print(m.version('mutmut'))"],
                          capture_output=True).stdout.strip()
    ranges = scope_ranges(clone)
    cfg = {"scope": ranges, "universe": UNIVERSE, "baseline_timeout_s": 1800,
           "timeout_base_s": a.timeout_base, "timeout_factor": a.timeout_factor,
           "deadline": time.time() + a.budget_min * 60 - (time.monotonic() - t0) if a.budget_min else None}
    log = clone / WORK / "mutants.jsonl"
    kept = log.read_text() if a.resume and log.exists() else ""
    work = write_helpers(clone, cfg)
    log.write_text(kept)
    done = {(r["file"], r["line"], r["index"]) for r in map(json.loads, kept.splitlines())}
    found, chosen = plan(py, work, a.max_mutants, a.seed, done)
    print(f"{tool}: {len(found)} mutants in scope, {len(chosen)} planned"
          + (f" (seeded sample, seed {a.seed})" if len(chosen) < len(found) else "")
          + (f", {len(done)} already recorded" if done else ""), flush=True)
    runner = f"{py} {work / 'runner.py'} --baseline"
    environ = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if a.estimate:
        sh(runner.split(), cwd=clone, env=environ)
        estimate(work, chosen, cfg)
        return
    cmd = [str(py), "-m", "mutmut", "run", "--paths-to-mutate", ",".join(SCOPE), "--tests-dir", "tests",
           "--runner", runner, "--no-progress"]
    print("running: " + " ".join(cmd[1:]), flush=True)
    with open(work / "mutmut.log", "w") as log:
        rc = subprocess.run(cmd, check=False, cwd=clone, env=environ, stdout=log, stderr=subprocess.STDOUT).returncode
    baked = [p for d in ("daemon", "export") for p in (clone / d).rglob("*.py.bak")]
    if baked:  # mutmut restores each file after its mutant; a leftover means it was interrupted
        print(f"warning: leftover mutmut backups {baked}: restore them before trusting the clone", flush=True)
    if not (work / "tests_by_line.json").exists():
        raise SystemExit(f"mutmut rc={rc}: its baseline failed, see {work / 'mutmut.log'} and {work / 'baseline.log'}")
    estimate(work, chosen, cfg)
    argv = " ".join(["python3", "bench/bench_mutation.py", *sys.argv[1:]])
    report(work, found, chosen, time.monotonic() - t0, tool, argv)


if __name__ == "__main__":
    main()
