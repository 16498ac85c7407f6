"""numba's on-disk cache for klflow's CPU kernels, keyed by the content of the code they compile.

numba's own cache checks only the timestamp and size of the file that defines a function, while
klflow's kernels are built from helpers in several modules (``fastmath``, ``exact_sum``,
``formula``, ...). Here every kernel's cache entry lives in a folder named after a hash of the
code this process actually loaded for its module and every klflow kernel module it reaches:
function bodies, constants and the numba, llvmlite, NumPy and Python versions. An edited helper
gives a new folder, so a process that loaded older code can only ever write to the older folder
and no stale kernel can be loaded.

Where the folders go, first usable place wins:

1. ``$NUMBA_CACHE_DIR/klflow-kernels`` when ``NUMBA_CACHE_DIR`` is set;
2. ``klflow/kernels/__pycache__/klflow-kernels`` when that is writable (not through a symlink);
3. numba's per-user cache folder (``~/.cache/numba/klflow-kernels``);
4. a private folder of this user in the temporary directory, with one warning line;
5. none: kernels compile in every process, with one warning line.

Inside, files are named by a hash of (function, closure constants, signature, target CPU) and
written atomically (a temporary file, then a rename), so ranks that start together share the
folder safely; a file whose recorded key differs is ignored. When a new folder appears, the
least recently used folders of older code beyond ``KEEP_FOLDERS`` lose their entries; nothing
here deletes a file it did not write, follows a symlink to read an entry, or writes through one.

>>> key = content_key("klflow.kernels.formula")
>>> len(key), key == content_key("klflow.kernels.formula")
(20, True)
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import stat
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

import llvmlite
import numba
import numpy as np
from numba.core import compiler, config
from numba.core.caching import _Cache
from numba.core.dispatcher import Dispatcher
from numba.core.serialize import dumps

PACKAGE = "klflow.kernels"
# Machinery that compiles, caches and runs kernels but is no part of what they compute (and
# holds state that changes as kernels are built): left out of the content key.
_MACHINERY = {f"{PACKAGE}.cache", f"{PACKAGE}.jit", f"{PACKAGE}.pool"}
FOLDER_NAME = "klflow-kernels"
ENTRY_SUFFIX = ".nbk"

# ------------------------------------------------------------------ the content key


def _canonical(value: Any, out: list[str], modules: set[str]) -> None:
    """Append a description of ``value`` that depends on its content only (not on object ids or
    hash seeds) to ``out``; klflow kernel modules it refers to are added to ``modules``."""
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        out.append(f"{type(value).__name__}:{value!r}")
    elif isinstance(value, (np.generic, np.dtype)):
        out.append(f"np:{value!r}")
    elif isinstance(value, types.CodeType):
        out.append(f"code:{value.co_name}:{value.co_argcount}:{value.co_kwonlyargcount}:{value.co_flags}")
        out.append(value.co_code.hex())
        out.append(repr((value.co_names, value.co_varnames, value.co_freevars, value.co_cellvars)))
        for constant in value.co_consts:
            _canonical(constant, out, modules)
    elif isinstance(value, (tuple, list)):
        out.append(f"{type(value).__name__}[{len(value)}]")
        for item in value:
            _canonical(item, out, modules)
    elif isinstance(value, (frozenset, set)):
        parts = []
        for item in value:
            part: list[str] = []
            _canonical(item, part, modules)
            parts.append("|".join(part))
        out.append(f"set{sorted(parts)}")
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            part: list[str] = []
            _canonical(key, part, modules)
            _canonical(item, part, modules)
            items.append("|".join(part))
        out.append(f"dict{sorted(items)}")
    elif isinstance(value, types.ModuleType):
        if value.__name__.startswith(PACKAGE) and value.__name__ not in _MACHINERY:
            modules.add(value.__name__)
        out.append(f"module:{value.__name__}")
    elif isinstance(value, Dispatcher):
        out.append(f"jit:{value.targetoptions!r}")
        _canonical(value.py_func, out, modules)
    elif isinstance(value, types.FunctionType):
        value = getattr(value, "__wrapped__", value)  # an inlinable: the function it wraps
        module = getattr(value, "__module__", "") or ""
        out.append(f"function:{module}.{value.__qualname__}")
        if not module.startswith(PACKAGE) or module in _MACHINERY:
            return  # numba's, NumPy's, or the machinery's: named only
        modules.add(module)
        _canonical(value.__code__, out, modules)
        _canonical(value.__defaults__, out, modules)
        _canonical(value.__kwdefaults__, out, modules)
        cells = tuple(cell.cell_contents for cell in value.__closure__ or ())
        _canonical(cells, out, modules)
    elif hasattr(value, "_defn") and isinstance(value._defn, types.FunctionType):  # numba intrinsic
        out.append("intrinsic")
        _canonical(value._defn, out, modules)
    else:
        text = repr(value)
        out.append(type(value).__qualname__ if " at 0x" in text else f"{type(value).__qualname__}:{text}")


def _module_text(name: str, modules: set[str]) -> str:
    """The canonical description of one loaded module's globals."""
    module = sys.modules.get(name) or importlib.import_module(name)
    out: list[str] = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("__") and key.endswith("__"):
            continue
        out.append(f"global:{key}")
        _canonical(value, out, modules)
    return "\n".join(out)


_keys: dict[str, str] = {}
_keys_lock = threading.Lock()


def content_key(module_name: str) -> str:
    """A hash of the loaded code of ``module_name`` and of every klflow kernel module it reaches,
    with the versions of the tools that compile it: the name of its cache folder."""
    with _keys_lock:
        if module_name in _keys:
            return _keys[module_name]
        digest = hashlib.sha256()
        versions = (sys.version, numba.__version__, llvmlite.__version__, np.__version__)
        digest.update(repr(versions).encode())
        seen: set[str] = set()
        pending = {module_name}
        while pending:
            name = min(pending)
            pending.discard(name)
            seen.add(name)
            reached: set[str] = set()
            digest.update(f"\n== {name}\n{_module_text(name, reached)}".encode())
            pending |= reached - seen
        _keys[module_name] = digest.hexdigest()[:20]
        return _keys[module_name]


# ------------------------------------------------------------------ where the cache lives


def _user_id() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else 0


def _warn(message: str) -> None:
    print(f"klflow: {message}", file=sys.stderr, flush=True)


def _is_real_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _writable_directory(path: Path, private: bool = False) -> bool:
    """Create ``path`` if needed; True if it is a real directory (no symlink) we can write in.
    ``private`` also requires that it belongs to this user and nobody else may write in it."""
    try:
        path.mkdir(mode=0o700 if private else 0o777, parents=not private, exist_ok=True)
        if not _is_real_directory(path):
            return False
        if private:
            info = os.lstat(path)
            if info.st_uid != _user_id() or info.st_mode & 0o077:
                return False
        handle, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(handle)
        os.unlink(probe)  # the probe file is ours
        return True
    except OSError:
        return False


_PACKAGE_DIR = Path(__file__).resolve().parent


def _in_tree_base() -> Path | None:
    pycache = _PACKAGE_DIR / "__pycache__"
    if os.path.islink(pycache):
        return None  # it would lead out of the package
    return pycache / FOLDER_NAME


def _user_wide_base() -> Path:
    from numba.misc.appdirs import AppDirs

    return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir) / FOLDER_NAME


def _private_temporary_base() -> Path:
    return Path(tempfile.gettempdir()) / f"{FOLDER_NAME}-{_user_id()}"


_base: Path | None = None
_base_resolved = False
_base_lock = threading.Lock()


def cache_base() -> Path | None:
    """The folder holding the kernel cache folders (resolved once per process); None if there is
    no usable place."""
    global _base, _base_resolved
    with _base_lock:
        if _base_resolved:
            return _base
        tried = []
        candidates: list[Path] = []
        if config.CACHE_DIR:
            candidates.append(Path(config.CACHE_DIR) / FOLDER_NAME)
        in_tree = _in_tree_base()
        if in_tree is not None:
            candidates.append(in_tree)
        candidates.append(_user_wide_base())
        for candidate in candidates:
            if _writable_directory(candidate):
                _base = candidate
                break
            tried.append(str(candidate))
        else:
            try:
                private = _private_temporary_base()
            except OSError:  # tempfile found no usable temporary directory at all
                private = Path(tempfile.tempdir or "/tmp") / f"{FOLDER_NAME}-{_user_id()}"
            if _writable_directory(private, private=True):
                _base = private
                _warn(
                    f"no writable kernel cache in {', '.join(tried)}; "
                    f"compiled kernels are kept in the private folder {private}"
                )
            else:
                _warn(
                    f"no writable kernel cache in {', '.join(tried + [str(private)])}; "
                    "kernels will be compiled again in every process"
                )
        _base_resolved = True
        return _base


def reset_cache_base() -> None:
    """Forget the resolved location (after ``NUMBA_CACHE_DIR`` or the file system changed)."""
    global _base, _base_resolved
    with _base_lock:
        _base, _base_resolved = None, False


def cache_folder(module_name: str) -> Path | None:
    """The folder for kernels defined in ``module_name``, created if needed; None if uncached."""
    base = cache_base()
    if base is None:
        return None
    folder = base / content_key(module_name)
    try:
        folder.mkdir()
    except FileExistsError:
        pass
    except OSError:
        return None
    else:
        _prune_older_folders(base, keep=folder)
    return folder if _is_real_directory(folder) else None


KEEP_FOLDERS = 8  # kernel folders of earlier code kept beside a new one (other checkouts, versions)
_KEY_LENGTH = 20


def _is_entry_name(name: str) -> bool:
    """A file klflow writes in a kernel folder: an entry, or a temporary one being written."""
    return name.endswith(ENTRY_SUFFIX) or (name.startswith(".") and name.endswith(".tmp"))


def _prune_older_folders(base: Path, keep: Path) -> None:
    """When a new kernel folder appears, empty the least recently used folders of older code
    beyond ``KEEP_FOLDERS``: only folders named like a content key, only the entries klflow
    writes, never through a symlink; a folder left with anything else in it stays."""
    try:
        folders = []
        for item in os.scandir(base):
            is_key = len(item.name) == _KEY_LENGTH and all(c in "0123456789abcdef" for c in item.name)
            if is_key and item.is_dir(follow_symlinks=False) and item.path != str(keep):
                folders.append((item.stat(follow_symlinks=False).st_mtime_ns, item.path))
    except OSError:
        return
    for _, path in sorted(folders, reverse=True)[KEEP_FOLDERS:]:
        try:
            for entry in os.scandir(path):
                if _is_entry_name(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)  # written by klflow, for code no longer loaded here
            os.rmdir(path)  # only if nothing else was in it
        except OSError:
            continue  # in use, or not ours to empty


# ------------------------------------------------------------------ one function's entries


def _read_entry(path: Path) -> bytes | None:
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read()


def _write_entry(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file, none, or all of it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644 & ~_umask())
        os.replace(temporary, path)  # replaces a symlink at ``path`` instead of writing through it
    except BaseException:
        try:
            os.unlink(temporary)  # our own temporary file
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class KernelCache(_Cache):
    """numba's cache interface for one dispatcher, stored as described in the module docstring."""

    def __init__(self, py_func: types.FunctionType) -> None:
        self._py_func = py_func
        self._module = py_func.__module__
        self._name = f"{self._module}.{py_func.__qualname__}"
        self._enabled = True

    def __repr__(self) -> str:
        return f"<KernelCache {self._name}>"

    @property
    def cache_path(self) -> str:
        folder = cache_folder(self._module)
        return str(folder) if folder is not None else ""

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def flush(self) -> None:  # entries are keyed by content: nothing can be stale
        pass

    def _key(self, sig: Any, codegen: Any) -> str:
        cells = tuple(cell.cell_contents for cell in self._py_func.__closure__ or ())
        return repr((self._name, cells, str(sig), codegen.magic_tuple()))

    def _path(self, key: str) -> Path | None:
        folder = cache_folder(self._module)
        if folder is None:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        short = self._name.removeprefix(PACKAGE + ".").replace("<locals>.", "").replace("<", "")
        return folder / f"{short}-{digest}{ENTRY_SUFFIX}"

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        if not self._enabled:
            return None
        # Loading needs numba's runtime (its symbols are linked in), not the registries that
        # refresh() loads for compiling (a few tenths of a second of imports).
        from numba.core.runtime import rtsys

        rtsys.initialize(target_context)
        key = self._key(sig, target_context.codegen())
        path = self._path(key)
        data = _read_entry(path) if path is not None else None
        if data is None:
            return None
        try:
            stored_key, payload = pickle.loads(data)
        except Exception:  # a damaged entry is a miss; the next save replaces it
            return None
        if stored_key != key:
            return None
        return compiler.CompileResult._rebuild(target_context, *payload)

    def save_overload(self, sig: Any, cres: Any) -> None:
        if not self._enabled or cres.library.has_dynamic_globals or any(not x.can_cache for x in cres.lifted):
            return
        key = self._key(sig, cres.codegen)
        path = self._path(key)
        if path is None:
            return
        try:
            _write_entry(path, dumps((key, cres._reduce())))  # also marks the folder as used
        except OSError:
            pass  # a full or vanished folder costs a compile next time, nothing else


def _fresh_locks_after_fork() -> None:
    """A lock another thread held at fork would stay held in the child forever."""
    global _keys_lock, _base_lock
    _keys_lock, _base_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_after_fork)


def enable(dispatcher: Dispatcher) -> Dispatcher:
    """Give ``dispatcher`` klflow's kernel cache (instead of numba's ``cache=True``)."""
    dispatcher._cache = KernelCache(dispatcher.py_func)
    return dispatcher
