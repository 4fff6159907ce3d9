"""Mutation check of the fake-CUDA tests: remove each device move in `rlhf_ray/`, one at a time, and
run `pytest -m fake_cuda`; every removal must make some test fail.

A device move is a `.to(X)` call whose argument is not a dtype (a device, a module's or tensor's
place) and a `device=` argument of a call (a tensor built where the batch lives). Each would be a
device-mismatch error on the first GPU run that no CPU test sees unless the fake-CUDA tests do.
The package and tests are copied to a scratch folder and mutated there, never in place.

    .venv/bin/python scripts/device_moves.py [--out docs/results/device_moves.json] [--jobs 2]
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("rlhf_ray", "tests", "configs", "pyproject.toml")
# removals that change no behaviour on a GPU, each with why (path, removed text): not counted
EQUIVALENT = {
    ("rlhf_ray/rm/losses.py", "device=device"):
        "pairs_best_first's index pairs index the logits; CPU indices into a CUDA tensor work (a copy)",
}


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the repository
    line: int
    removed: str  # the source text taken out
    start: int  # character offsets in the file
    end: int
    replacement: str


def _offsets(source: str) -> list[int]:
    starts, total = [], 0
    for line in source.splitlines(keepends=True):
        starts.append(total)
        total += len(line)
    return starts


def _is_dtype(text: str) -> bool:
    return text.endswith("dtype") or text.startswith("torch.") and not text.startswith("torch.device")


def mutants_of(path: Path, source: str) -> list[Mutant]:
    """Every device move of one file, each as the edit that removes it."""
    starts, rel = _offsets(source), str(path.relative_to(ROOT))
    where = lambda node, end=False: (starts[(node.end_lineno if end else node.lineno) - 1]  # noqa: E731
                                     + (node.end_col_offset if end else node.col_offset))
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "to" and len(node.args) == 1 and not node.keywords:
            arg = ast.get_source_segment(source, node.args[0])
            if not _is_dtype(arg):
                receiver = ast.get_source_segment(source, func.value)
                found.append(Mutant(rel, node.lineno, f".to({arg})", where(node), where(node, True),
                                    receiver))
        for i, kw in enumerate(node.keywords):
            if kw.arg == "device":
                # from the end of what precedes it (the comma goes too) to its own end
                before = node.keywords[i - 1].value if i else (node.args[-1] if node.args else None)
                start = where(before, True) if before is not None else where(kw)
                end = where(kw.value, True)
                if before is None and i + 1 < len(node.keywords):  # first of several: its comma after
                    end = where(node.keywords[i + 1])
                found.append(Mutant(rel, kw.lineno, source[start:end].strip(", \n"), start, end, ""))
    return sorted(found, key=lambda m: (m.path, m.start))


def all_mutants() -> list[Mutant]:
    return [m for path in sorted((ROOT / "rlhf_ray").rglob("*.py"))
            for m in mutants_of(path, path.read_text()) if (m.path, m.removed) not in EQUIVALENT]


def fake_cuda_files(scratch: Path) -> list[str]:
    """Only the files that hold fake-CUDA tests are collected (the others import much more)."""
    return sorted(str(f.relative_to(scratch)) for f in (scratch / "tests").rglob("test_*.py")
                  if "fake_cuda" in f.read_text())


class TestServer:
    """Runs the fake-CUDA tests of one scratch copy, again and again, in a forked child each time.

    Importing torch, transformers and pytest is most of a run (6 of 9 s here), so a server process
    (`--serve SCRATCH`) imports every third-party module a run needs once, then forks per run; the
    child imports the package fresh from the scratch copy, mutated as it is at that moment.
    """

    def __init__(self, scratch: Path, timeout_s: float):
        env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(scratch), "--timeout-s",
                                      str(timeout_s)], cwd=scratch, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self) -> tuple[bool, str]:
        """Whether the fake-CUDA tests pass as the copy is now, and the first failing test's id."""
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fake-CUDA test server died (exit {self.proc.wait()})")
        verdict = json.loads(answer)
        return verdict["passed"], verdict["failed"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _run_in_child(scratch: Path, log: Path) -> int:
    """In a forked child: pytest on the copy's fake-CUDA files, its output to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import pytest
    return int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-m", "fake_cuda",
                            *fake_cuda_files(scratch)]))


def _forked(scratch: Path, log: Path, timeout_s: float) -> int:
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = _run_in_child(scratch, log)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.05)


def serve(scratch: Path, timeout_s: float) -> None:
    """The server's side: a first run finds which modules a run imports; those outside the project
    are imported here once, so each later fork starts with them (never the project's own)."""
    sys.path.insert(0, str(scratch))
    log, seen = scratch / ".fake_cuda.log", scratch / ".modules.json"
    pid = os.fork()
    if pid == 0:
        try:
            _run_in_child(scratch, log)
            seen.write_text(json.dumps(sorted(sys.modules)))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    own = ("rlhf_ray", "tests", "conftest", "__main__")
    for name in json.loads(seen.read_text()) if seen.exists() else []:
        if name.split(".")[0] not in own:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - a module that only imports in its own order: skipped
                pass
    for _ in sys.stdin:
        code = _forked(scratch, log, timeout_s)
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        failed = next((line.split(" ")[1] for line in lines if line.startswith("FAILED ")), "")
        print(json.dumps({"passed": code == 0, "failed": failed}), flush=True)


def scratch_copy(parent: Path, index: int) -> Path:
    scratch = parent / f"copy{index}"
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, scratch / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, scratch / name)
    return scratch


def check(mutant: Mutant, scratch: Path, server: TestServer) -> dict:
    target = scratch / mutant.path
    original = target.read_text()
    target.write_text(original[: mutant.start] + mutant.replacement + original[mutant.end :])
    try:
        passed, failed = server.run()
    finally:
        target.write_text(original)
    return {**asdict(mutant), "caught": not passed, "failing_test": failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write every mutant and its verdict here (JSON)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants checked at once (one copy each)")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--serve", metavar="SCRATCH", help=argparse.SUPPRESS)  # a TestServer's process
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.timeout_s)
        return 0
    mutants = all_mutants()
    results, start = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="device-moves-") as tmp:
        copies = [scratch_copy(Path(tmp), i) for i in range(args.jobs)]
        servers = [TestServer(copy, args.timeout_s) for copy in copies]
        try:
            passed, failed = servers[0].run()
            if not passed:  # a mutant is only caught if the unmutated tests pass
                print(f"[device-moves] the fake-CUDA tests fail unmutated ({failed or 'see pytest'})",
                      file=sys.stderr)
                return 2
            batches = [mutants[i :: args.jobs] for i in range(args.jobs)]

            def work(j: int) -> None:
                for mutant in batches[j]:
                    results.append(check(mutant, copies[j], servers[j]))
                    rate = len(results) / (time.monotonic() - start)
                    print(f"[device-moves] {len(results)}/{len(mutants)} {rate * 60:.1f}/min ETA "
                          f"{(len(mutants) - len(results)) / rate:.0f} s", file=sys.stderr, flush=True)

            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(work, range(args.jobs)))
        finally:
            for server in servers:
                server.close()
    results.sort(key=lambda r: (r["path"], r["start"]))
    survivors = [r for r in results if not r["caught"]]
    for r in results:
        verdict = f"caught by {r['failing_test']}" if r["caught"] else "SURVIVED"
        print(f"{r['path']}:{r['line']}  {r['removed']!r}: {verdict}")
    print(f"{len(results) - len(survivors)} of {len(results)} device moves caught by a fake-CUDA test")
    if args.out:
        Path(args.out).write_text(json.dumps({"mutants": results, "survived": len(survivors)}, indent=1))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
