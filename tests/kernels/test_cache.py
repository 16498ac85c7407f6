"""The kernel cache: keyed by the loaded code, safe to share, never destructive, always usable.

Most cases run klflow in a fresh process on a copy of the package, so that its sources can be
edited (keeping their size and timestamps, as ``cp -p`` or ``rsync -t`` do) without touching the
checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import klflow
from klflow.kernels import cache

PACKAGE = Path(klflow.__file__).resolve().parent
HANG_GUARD_S = 900  # a process here compiles a kernel or two; only a hang takes this long

LOSS = textwrap.dedent("""
    import sys
    import numpy as np
    import klflow as flow
    x = np.linspace(-2.0, 1.0, 5000).astype(np.float32)
    y = np.linspace(0.1, 0.9, 5000).astype(np.float32)
    if sys.argv[1:] == ["wait"]:
        import klflow.kernels.cpu  # every kernel module is loaded now
        print("loaded", flush=True)
        input()  # compile only once the test says so
    from klflow.kernels import cache
    value = flow.nn.functional.kl_div(x, y, reduction="sum").item()
    print(repr(value), cache.cache_base(), flush=True)
""")


def copy_package(into: Path) -> Path:
    """A copy of the klflow package under ``into`` (to put on PYTHONPATH); returns the copy."""
    target = into / "klflow"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def edit_keeping_size_and_times(path: Path, old: str, new: str) -> None:
    assert len(old) == len(new)
    text = path.read_text()
    assert text.count(old) == 1, old
    info = path.stat()
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size


def environment(root: Path | None, **variables: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(PYTHONDONTWRITEBYTECODE="1", NUMBA_NUM_THREADS="1")  # imports read the sources
    if root is not None:
        env["PYTHONPATH"] = str(root)
    env.update(variables)
    return env


def run(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert done.returncode == 0, done.stderr
    return done


def loss_value(env: dict) -> float:
    return float(run(LOSS, env).stdout.split()[0])


def expected_sum(sign: float = -1.0) -> float:
    x = np.linspace(-2.0, 1.0, 5000).astype(np.float32).astype(np.float64)
    y = np.linspace(0.1, 0.9, 5000).astype(np.float32).astype(np.float64)
    return float(np.float32(np.sum(y * (np.log(y) + sign * x))))


FORMULA_EDIT = ("return y * (log_y - x) if y > 0 else 0.0", "return y * (log_y + x) if y > 0 else 0.0")


# ------------------------------------------------------------------ keyed by content
def test_the_key_is_a_function_of_the_loaded_code():
    key = cache.content_key("klflow.kernels.cpu")
    cache._keys.clear()  # computed again, after kernels have been built and called above
    assert cache.content_key("klflow.kernels.cpu") == key
    assert cache.content_key("klflow.kernels.exact_sum") != key  # a module and what it reaches


KEY = "from klflow.kernels import cpu, cache; print(cache.content_key('klflow.kernels.cpu'))"


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("formula.py", *FORMULA_EDIT),  # a function body
        ("fastmath.py", "_LG7 = 1.479819860511658591e-01", "_LG7 = 1.479819860511658591e-02"),  # a constant
        ("exact_sum.py", "CARRY_LIMIT = 1 << 46", "CARRY_LIMIT = 1 << 45"),  # a sibling's constant
    ],
)
def test_an_edit_that_keeps_size_and_times_changes_the_key(tmp_path, module, old, new):
    copy = copy_package(tmp_path)
    before = run(KEY, environment(tmp_path)).stdout
    edit_keeping_size_and_times(copy / "kernels" / module, old, new)
    assert run(KEY, environment(tmp_path)).stdout != before


def test_a_comment_leaves_the_key_alone(tmp_path):
    copy = copy_package(tmp_path)
    before = run(KEY, environment(tmp_path)).stdout
    source = copy / "kernels" / "formula.py"
    source.write_text(source.read_text() + "\n# a comment\n")
    assert run(KEY, environment(tmp_path)).stdout == before


@pytest.mark.parametrize("where", ["NUMBA_CACHE_DIR", "in the package"])
def test_an_edited_helper_never_runs_old_kernels(tmp_path, where):
    copy = copy_package(tmp_path)
    variables = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")} if where == "NUMBA_CACHE_DIR" else {}
    env = environment(tmp_path, **variables)
    assert loss_value(env) == expected_sum(-1.0)  # fills the cache
    edit_keeping_size_and_times(copy / "kernels" / "formula.py", *FORMULA_EDIT)
    assert loss_value(env) == expected_sum(+1.0)


def test_a_process_that_loaded_older_code_cannot_poison_the_cache(tmp_path):
    copy = copy_package(tmp_path)
    env = environment(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    old = subprocess.Popen(
        [sys.executable, "-c", LOSS, "wait"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert old.stdout.readline().strip() == "loaded"
        edit_keeping_size_and_times(copy / "kernels" / "formula.py", *FORMULA_EDIT)
        # The old process compiles its (old) kernels only now, into the cache the new code uses.
        out, _ = old.communicate("\n", timeout=HANG_GUARD_S)
    finally:
        old.kill()
    assert float(out.split()[0]) == expected_sum(-1.0)
    assert loss_value(env) == expected_sum(+1.0)


# ------------------------------------------------------------------ where it lives
@pytest.fixture
def fresh_base(monkeypatch):
    """Resolve the cache location afresh, and again (for the rest of the suite) afterwards."""
    cache.reset_cache_base()
    yield
    monkeypatch.undo()
    cache.reset_cache_base()


def test_numba_cache_dir_comes_first(tmp_path, monkeypatch, fresh_base):
    monkeypatch.setattr(cache.config, "CACHE_DIR", str(tmp_path / "numba"))
    assert cache.cache_base() == tmp_path / "numba" / cache.FOLDER_NAME


def test_the_package_folder_is_used_when_writable(tmp_path, monkeypatch, fresh_base):
    monkeypatch.setattr(cache.config, "CACHE_DIR", "")
    monkeypatch.setattr(cache, "_PACKAGE_DIR", tmp_path)
    assert cache.cache_base() == tmp_path / "__pycache__" / cache.FOLDER_NAME


def test_a_symlinked_package_pycache_is_not_followed(tmp_path, monkeypatch, fresh_base):
    elsewhere = tmp_path / "another-project"
    elsewhere.mkdir()
    package = tmp_path / "package"
    package.mkdir()
    (package / "__pycache__").symlink_to(elsewhere)
    monkeypatch.setattr(cache.config, "CACHE_DIR", "")
    monkeypatch.setattr(cache, "_PACKAGE_DIR", package)
    monkeypatch.setattr(cache, "_user_wide_base", lambda: tmp_path / "user" / cache.FOLDER_NAME)
    assert cache.cache_base() == tmp_path / "user" / cache.FOLDER_NAME
    assert not any(elsewhere.iterdir())


def test_a_symlinked_key_folder_is_refused(tmp_path, monkeypatch, fresh_base):
    monkeypatch.setattr(cache.config, "CACHE_DIR", str(tmp_path))
    outside = tmp_path / "outside"
    outside.mkdir()
    base = tmp_path / cache.FOLDER_NAME
    base.mkdir()
    (base / cache.content_key("klflow.kernels.formula")).symlink_to(outside)
    assert cache.cache_folder("klflow.kernels.formula") is None


def test_entries_are_not_read_or_written_through_symlinks(tmp_path, monkeypatch, fresh_base):
    monkeypatch.setattr(cache.config, "CACHE_DIR", str(tmp_path))
    from klflow.kernels.jit import jit

    @jit
    def add_one(value):
        return value + 1

    add_one(1.0)  # compiles and writes its entry
    [entry] = (tmp_path / cache.FOLDER_NAME).rglob("*add_one*.nbk")
    victim = tmp_path / "victim"
    victim.write_bytes(b"not numba's")
    entry.unlink()
    entry.symlink_to(victim)
    assert cache._read_entry(entry) is None
    cache._write_entry(entry, b"new entry")
    assert victim.read_bytes() == b"not numba's" and not entry.is_symlink()


def test_nothing_it_did_not_write_is_ever_deleted(tmp_path):
    shared = tmp_path / "cache"
    foreign = [shared / "other_project.f-12.py311.nbi", shared / "other_project.f-12.py311.1.nbc"]
    older = shared / cache.FOLDER_NAME / "0123456789abcdef0123" / "cpu.old-kernel.nbk"  # kept: few folders
    for path in [*foreign, older]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep me")
    assert loss_value(environment(None, NUMBA_CACHE_DIR=str(shared))) == expected_sum(-1.0)
    assert all(path.read_bytes() == b"keep me" for path in [*foreign, older])


def test_damaged_entries_are_compiled_again(tmp_path):
    env = environment(None, NUMBA_CACHE_DIR=str(tmp_path))
    assert loss_value(env) == expected_sum(-1.0)
    entries = list(tmp_path.rglob("*.nbk"))
    assert entries
    for entry in entries:
        entry.write_bytes(b"\x80\x05 damaged")
    assert loss_value(env) == expected_sum(-1.0)


# ------------------------------------------------------------------ read-only install, no home
# Root may write anywhere, so where the test runs as root and 'nobody' cannot reach the
# interpreter, the child is made to see those folders as a read-only file system does: creating a
# file or a folder under them fails with EACCES.
READ_ONLY_SHIM = textwrap.dedent("""
    import errno, os
    _read_only = tuple(os.environ["READ_ONLY_FOLDERS"].split(os.pathsep))
    _open, _mkdir = os.open, os.mkdir

    def _refuse(path):
        if os.path.abspath(os.fsdecode(path)).startswith(_read_only):
            raise PermissionError(errno.EACCES, "Permission denied (read-only)", path)

    def _guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            _refuse(path)
        return _open(path, flags, *args, **kwargs)

    def _guarded_mkdir(path, *args, **kwargs):
        _refuse(path)
        return _mkdir(path, *args, **kwargs)

    os.open, os.mkdir = _guarded_open, _guarded_mkdir
""")


def _nobody_can_run_python() -> dict | None:
    """Keyword arguments that run a child as 'nobody', if we are root and it can run Python."""
    if os.geteuid() != 0:
        return None
    import pwd

    nobody = pwd.getpwnam("nobody")
    as_nobody = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import numba"], capture_output=True, cwd="/", **as_nobody
        )
    except OSError:  # the interpreter lies in a folder 'nobody' may not enter
        return None
    return as_nobody if probe.returncode == 0 else None


@pytest.mark.parametrize("temporary", ["writable", "read-only"])
def test_a_read_only_install_without_a_writable_home_works(temporary):
    # Folders another user can read: pytest's tmp_path is private to us.
    root = Path(tempfile.mkdtemp(prefix="klflow-readonly-"))
    try:
        copy = copy_package(root)
        home = root / "home"
        scratch = root / "tmp"
        for folder in (home, scratch):
            folder.mkdir()
        read_only = [copy, home]
        if temporary == "read-only":  # tempfile would fall back to these
            read_only += [scratch, root, Path("/tmp"), Path("/var/tmp"), Path("/usr/tmp")]
        other_user = _nobody_can_run_python()
        env = environment(root, HOME=str(home), TMPDIR=str(scratch), XDG_CACHE_HOME=str(home / ".cache"))
        script = LOSS
        if other_user is not None:  # real permissions
            for path in [root, *root.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            scratch.chmod(0o1777 if temporary == "writable" else 0o555)
        elif os.geteuid() != 0:
            for path in [p for folder in read_only for p in (folder, *folder.rglob("*"))]:
                path.chmod(path.stat().st_mode & ~0o222)
        else:
            env["READ_ONLY_FOLDERS"] = os.pathsep.join(str(folder) for folder in read_only)
            script = READ_ONLY_SHIM + LOSS
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            cwd=root,
            **(other_user or {}),
        )
        assert done.returncode == 0, done.stderr
        assert float(done.stdout.split()[0]) == expected_sum(-1.0)
        warnings = [line for line in done.stderr.splitlines() if line.startswith("klflow: no writable")]
        assert len(warnings) == 1, done.stderr
        if temporary == "writable":
            assert "private folder" in warnings[0] and str(scratch) in done.stdout
        elif other_user is None:  # nothing writable at all
            assert "compiled again in every process" in warnings[0] and done.stdout.split()[1] == "None"
        assert not any(copy.rglob("*.nbk")) and not any(home.rglob("*"))
    finally:
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(root)


def test_only_klflows_older_entries_beyond_the_kept_folders_are_removed(tmp_path, monkeypatch, fresh_base):
    monkeypatch.setattr(cache.config, "CACHE_DIR", str(tmp_path))
    base = tmp_path / cache.FOLDER_NAME
    older = []
    for age in range(cache.KEEP_FOLDERS + 4):  # oldest first
        folder = base / f"{age:020x}"
        folder.mkdir(parents=True)
        (folder / "cpu.kernel-0123.nbk").write_bytes(b"entry")
        os.utime(folder, ns=(age * 10**9, age * 10**9))
        older.append(folder)
    (older[0] / "notes.txt").write_text("someone else's")  # this folder is not emptied of it
    os.utime(older[0], ns=(0, 0))  # still the oldest
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cpu.kernel-0123.nbk").write_bytes(b"not in the cache")
    (base / ("f" * 20)).symlink_to(outside)  # named like a key folder, but a link
    unrelated = base / "not-a-key"
    unrelated.mkdir()
    (unrelated / "x.nbk").write_bytes(b"keep")

    new = cache.cache_folder("klflow.kernels.formula")  # a folder that did not exist: prunes
    assert new is not None and new.is_dir()
    kept = older[-cache.KEEP_FOLDERS :]
    assert all((folder / "cpu.kernel-0123.nbk").exists() for folder in kept)
    assert all(not folder.exists() for folder in older[1:4])
    assert (older[0] / "notes.txt").exists() and not (older[0] / "cpu.kernel-0123.nbk").exists()
    assert (outside / "cpu.kernel-0123.nbk").exists() and (unrelated / "x.nbk").exists()
