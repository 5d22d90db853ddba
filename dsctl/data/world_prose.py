"""Real English prose for the default world, taken from the installed Python's docstrings.

Nothing is downloaded: we import a fixed, sorted list of standard-library modules (and
their submodules, in sorted order), read the docstrings of each module and of its public
classes, functions and methods with `inspect`, strip what is not prose (doctest
sessions, call signatures, indented code and argument tables, reST markup) and pack the
remaining paragraphs into documents of a few hundred words.

The text depends on the Python version (docstrings change between releases), so the
source stage puts the version into its cache key. It must not depend on anything else,
yet libraries patch the stdlib when imported (torch, for one, replaces functions in
`inspect`), so the harvest runs in a fresh isolated interpreter (`python -I -S` on this
file, which imports nothing but the stdlib) rather than in the stage's own process.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import subprocess
import sys
import warnings
from types import ModuleType
from typing import Iterator

#: Standard-library modules and packages the prose comes from, in the order used.
#: Fixed rather than `sys.stdlib_module_names` so the world does not change when a
#: Python release adds a module; modules missing from a build are skipped. Left out on
#: purpose: modules with import side effects (antigravity, this), GUI toolkits, and
#: test suites.
STDLIB_MODULES = tuple(sorted("""
abc aifc argparse array ast asynchat asyncio asyncore base64 bdb binascii bisect builtins
bz2 calendar cgi cgitb chunk cmath cmd code codecs codeop collections colorsys compileall
concurrent configparser contextlib contextvars copy copyreg cProfile csv ctypes curses
dataclasses datetime dbm decimal difflib dis doctest email encodings enum errno faulthandler
filecmp fileinput fnmatch fractions ftplib functools gc getopt getpass gettext glob graphlib
gzip hashlib heapq hmac html http imaplib imghdr importlib inspect io ipaddress itertools json
keyword linecache locale logging lzma mailbox mailcap marshal math mimetypes mmap
modulefinder multiprocessing netrc nntplib numbers operator optparse os pathlib pdb pickle
pickletools pipes pkgutil platform plistlib poplib posixpath pprint profile pstats pty
py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter runpy sched secrets
selectors shelve shlex shutil signal site smtpd smtplib sndhdr socket socketserver sqlite3
ssl stat statistics string stringprep struct subprocess sunau symtable sys sysconfig tabnanny
tarfile telnetlib tempfile textwrap threading time timeit token tokenize tomllib trace
traceback tracemalloc types typing unicodedata unittest urllib uu uuid venv warnings wave
weakref webbrowser wsgiref xdrlib xml xmlrpc zipapp zipfile zipimport zlib zoneinfo
""".split()))

_SKIP_PARTS = ("test", "tests", "__main__", "idle_test")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")
_ROLE = re.compile(r":[\w:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``|`([^`]*)`")
_PLAIN_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_STOP = frozenset("the a an of to and is in that it for be with as this are or by on".split())


def _import(name: str) -> ModuleType | None:
    # Importing is how `pydoc` reads docs too; silence import-time chatter so the world
    # is the same on a terminal and in CI.
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - a module that cannot import is just skipped
        return None


def iter_modules(names: tuple[str, ...] = STDLIB_MODULES) -> Iterator[ModuleType]:
    """The listed modules and, for packages, their public submodules in sorted order."""
    for name in names:
        module = _import(name)
        if module is None:
            continue
        yield module
        if not hasattr(module, "__path__"):
            continue
        subs = sorted(info.name for info in pkgutil.walk_packages(module.__path__, name + ".", onerror=lambda _: None))
        for sub in subs:
            parts = sub.split(".")
            if any(p in _SKIP_PARTS or p.startswith("_") for p in parts):
                continue
            if (submodule := _import(sub)) is not None:
                yield submodule


def _documented_objects(module: ModuleType) -> Iterator[object]:
    yield module
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(value) or inspect.isroutine(value)):
            continue
        yield value
        if inspect.isclass(value):
            for member_name, member in sorted(vars(value).items()):
                if not member_name.startswith("_") and (inspect.isroutine(member) or isinstance(member, property)):
                    yield member


def prose_paragraphs(docstring: str) -> list[str]:
    """The prose paragraphs of one docstring, each joined onto a single line."""
    paragraphs, current, in_doctest = [], [], False
    for raw in docstring.splitlines() + [""]:
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            in_doctest = False
            if current:
                paragraphs.append(" ".join(current))
            current = []
            continue
        if stripped.startswith((">>>", "...")) or in_doctest:
            in_doctest = True  # the session and its output run to the next blank line
            current = []
            continue
        if line[0].isspace() or _SIGNATURE.match(stripped) or set(stripped) <= set("-=~^*#"):
            continue  # indented code, argument tables, signatures, reST underlines
        current.append(stripped)
    return [p for p in (_tidy(p) for p in paragraphs) if _is_prose(p)]


def _tidy(paragraph: str) -> str:
    paragraph = _ROLE.sub(r"\1", paragraph)
    paragraph = _LITERAL.sub(lambda m: m.group(1) or m.group(2), paragraph)
    return re.sub(r"\s+", " ", paragraph).strip()


def _is_prose(paragraph: str) -> bool:
    """Sentences, not code or headings: enough words, mostly plain words (not
    identifiers like `os.path.join()`), some stop words, and a sentence ending (a
    paragraph ending in ':' introduced code that was removed)."""
    words = paragraph.split()
    if len(words) < 5 or not paragraph.endswith((".", "!", "?")):
        return False
    plain = sum(bool(_PLAIN_WORD.fullmatch(w.strip(".,;:!?()[]\"'"))) for w in words) / len(words)
    stops = sum(w.lower() in _STOP for w in words)
    return plain >= 0.85 and stops >= 2


def docstring_documents(min_words: int = 40) -> list[tuple[str, str]]:
    """(source name, document text) pairs, deterministic for a given Python build.

    Runs `harvest` in a fresh interpreter with no site-packages, so whatever this
    process has imported or patched cannot change the result.
    """
    command = [sys.executable, "-I", "-S", __file__, str(min_words)]
    done = subprocess.run(command, capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"harvesting stdlib docstrings failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return [(name, text) for name, text in json.loads(done.stdout)]


def harvest(min_words: int = 40) -> list[tuple[str, str]]:
    """The harvest itself, in this process: (source name, document text) pairs.

    Paragraphs are packed in reading order into documents of at least `min_words` words
    (a single long paragraph may make a longer one), never across sources; a paragraph
    repeated verbatim elsewhere in the stdlib (inherited or copied docstrings) is kept
    only the first time, so the only exact and near duplicates in the world are the
    planted ones.
    """
    seen: set[str] = set()
    documents: list[tuple[str, str]] = []
    for source, docstrings in _docstring_groups():
        pending: list[str] = []
        count = 0
        for doc in docstrings:
            for paragraph in prose_paragraphs(doc):
                if paragraph in seen:
                    continue
                seen.add(paragraph)
                pending.append(paragraph)
                count += len(paragraph.split())
                if count >= min_words:
                    documents.append((source, "\n\n".join(pending)))
                    pending, count = [], 0
        if pending and documents and documents[-1][0] == source:
            # A short tail joins the group's last document rather than being lost.
            documents[-1] = (source, documents[-1][1] + "\n\n" + "\n\n".join(pending))
    return documents


def _docstring_groups() -> Iterator[tuple[str, Iterator[str]]]:
    """(source name, its docstrings): each module, then the language-reference topics
    `pydoc` shows for `help("for")` and friends (real prose from the Python docs)."""
    for module in iter_modules():
        yield module.__name__, _module_docstrings(module)
    topics = _import("pydoc_data.topics")
    for name in sorted(getattr(topics, "topics", {})):
        yield f"pydoc:{name}", iter([topics.topics[name]])


def _module_docstrings(module: ModuleType) -> Iterator[str]:
    for obj in _documented_objects(module):
        # Reading attributes of deprecated aliases (typing.io, ...) warns; not our news.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            doc = inspect.getdoc(obj) if obj is module or inspect.isclass(obj) else obj.__doc__
        if isinstance(doc, str):
            yield inspect.cleandoc(doc)


if __name__ == "__main__":
    # ASCII-only JSON: the isolated child may run under any locale.
    sys.stdout.write(json.dumps(harvest(int(sys.argv[1])), ensure_ascii=True))
