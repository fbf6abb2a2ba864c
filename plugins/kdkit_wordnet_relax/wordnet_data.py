"""Finding Princeton WordNet 3.0 for nltk, online or offline.

:func:`get_wordnet` returns an nltk ``WordNetCorpusReader``, trying in order:

1. nltk's own data (``nltk.data.find("corpora/wordnet")`` or ``corpora/wordnet.zip``);
2. a copy kdkit assembled earlier in its cache (``<cache>/nltk_data/corpora/wordnet``);
3. ``nltk.download("wordnet")`` with a short socket timeout (skipped when ``KDKIT_OFFLINE=1``
   or ``KDKIT_NO_DOWNLOAD=1``; its output is silenced, a failure just moves on);
4. assembling the corpus from the Debian/Ubuntu packages ``wordnet-base`` and
   ``wordnet-sense-index`` (``/usr/share/wordnet``, or ``$KDKIT_WORDNET_DIR``) into kdkit's
   cache: the files are *copied* (nltk refuses data paths that resolve outside its data
   directories) and the ``lexnames`` table, which Debian does not ship, is written;
5. otherwise one :class:`kdkit.errors.KdkitError` that says how to install WordNet.

nltk is imported lazily; nothing here runs at ``import kdkit_wordnet_relax``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import socket
import threading
import warnings
from pathlib import Path

from kdkit import KdkitError

from kdkit_wordnet_relax.paths import cache_root

log = logging.getLogger("kdkit.wordnet_relax")

#: Where Debian's ``wordnet-base`` puts the database files.
DEBIAN_WORDNET_DIR = "/usr/share/wordnet"

#: WordNet 3.0's lexicographer-file table (``lexnames(5WN)``): number, name, syntactic category.
LEXNAMES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)

#: Files nltk's reader needs (``lexnames`` is written by kdkit when absent).
REQUIRED_FILES = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
) + ("noun.exc", "verb.exc", "adj.exc", "adv.exc")

INSTALL_HINT = (
    "install WordNet 3.0 with `apt-get install wordnet-base wordnet-sense-index` (Debian/Ubuntu; "
    "kdkit assembles nltk's corpus from /usr/share/wordnet, or from $KDKIT_WORDNET_DIR) or with "
    "`python -m nltk.downloader wordnet` (needs the internet)"
)

_LOCK = threading.Lock()
_READER = None


def lexnames_text() -> str:
    """The 45-line ``lexnames`` file of WordNet 3.0 (``NN<TAB>name<TAB>category``)."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXNAMES))


def offline() -> bool:
    """True when downloads are switched off (``KDKIT_OFFLINE`` or ``KDKIT_NO_DOWNLOAD`` set to 1/true)."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes")
        for var in ("KDKIT_OFFLINE", "KDKIT_NO_DOWNLOAD")
    )


def nltk_data_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The ``nltk_data`` directory inside kdkit's cache (``<cache>/nltk_data``)."""
    return Path(os.path.expanduser(cache_dir)) / "nltk_data" if cache_dir else cache_root() / "nltk_data"


def _add_data_path(path: Path) -> None:
    import nltk

    path = str(path)
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)


def _find_nltk_wordnet():
    """nltk's path pointer of an installed wordnet corpus, or None."""
    import nltk

    for resource in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            return nltk.data.find(resource)
        except LookupError:
            continue
    return None


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED_FILES + ("lexnames",))


def _try_download(timeout: float) -> bool:
    """``nltk.download("wordnet")`` with a socket timeout and silenced output; True on success."""
    import nltk

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            ok = bool(nltk.download("wordnet", quiet=True, raise_on_error=False,
                                     print_error_to=io.StringIO()))
    except Exception:  # any network or permission failure means "not available"
        ok = False
    finally:
        socket.setdefaulttimeout(previous)
    return ok


def source_dir() -> Path | None:
    """The directory holding Debian's WordNet files (``$KDKIT_WORDNET_DIR`` or /usr/share/wordnet)."""
    for candidate in (os.environ.get("KDKIT_WORDNET_DIR"), DEBIAN_WORDNET_DIR):
        if candidate and all((Path(candidate) / n).is_file() for n in REQUIRED_FILES):
            return Path(candidate)
    return None


def assemble(source: str | os.PathLike, data_dir: str | os.PathLike) -> Path:
    """Copy WordNet database files from ``source`` into ``<data_dir>/corpora/wordnet`` for nltk.

    Regular files at the top level of ``source`` are copied (never symlinked) and ``lexnames``
    is written when the source lacks it.  The directory appears atomically (built under a
    temporary name, then renamed), so concurrent processes never see half a corpus.
    Returns the corpus directory.
    """
    source = Path(source)
    missing = [n for n in REQUIRED_FILES if not (source / n).is_file()]
    if missing:
        raise KdkitError(f"{source} is not a WordNet 3.0 database (missing {', '.join(missing)}); {INSTALL_HINT}")
    target = Path(data_dir) / "corpora" / "wordnet"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".wordnet.tmp{os.getpid()}.{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for entry in sorted(source.iterdir()):
            if entry.is_file():  # follows a symlinked file, copies its bytes
                shutil.copyfile(entry, tmp / entry.name)
        if not (tmp / "lexnames").is_file():
            (tmp / "lexnames").write_text(lexnames_text(), encoding="ascii")
        (tmp / "KDKIT_SOURCE").write_text(f"assembled by kdkit_wordnet_relax from {source}\n")
        if target.exists() and not _complete(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _complete(target):  # someone else won the race only if theirs is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _reader_at(pointer):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multilingual.*")
        return WordNetCorpusReader(pointer, None)


def get_wordnet(cache_dir: str | os.PathLike | None = None, *, allow_download: bool | None = None,
                download_timeout: float = 5.0):
    """An nltk WordNet reader (see the module docstring for where the data comes from).

    :param cache_dir: kdkit's cache root (default :func:`kdkit_wordnet_relax.paths.cache_root`);
        the assembled corpus lives in ``<cache_dir>/nltk_data/corpora/wordnet``.
    :param allow_download: try ``nltk.download`` (default: unless ``KDKIT_OFFLINE=1``).
    :raises KdkitError: when no source works, naming the install commands.
    """
    global _READER
    with _LOCK:
        if _READER is not None and cache_dir is None:
            return _READER
        try:
            import nltk  # noqa: F401
        except ImportError as exc:  # pragma: no cover - nltk is a kdkit dependency
            raise KdkitError(f"the wordnet_relax plugin needs nltk (`pip install nltk`): {exc}") from None

        pointer = _find_nltk_wordnet()
        if pointer is None:
            local = nltk_data_dir(cache_dir)
            if _complete(local / "corpora" / "wordnet"):
                _add_data_path(local)
                pointer = _find_nltk_wordnet()
        if pointer is None:
            if allow_download is None:
                allow_download = not offline()
            if allow_download and _try_download(download_timeout):
                pointer = _find_nltk_wordnet()
                if pointer is not None:
                    log.info("downloaded WordNet with nltk")
        if pointer is None:
            src = source_dir()
            if src is None:
                raise KdkitError(f"WordNet data not found (no nltk corpus, download failed or disabled, "
                                 f"no {DEBIAN_WORDNET_DIR}); {INSTALL_HINT}")
            local = nltk_data_dir(cache_dir)
            try:
                assemble(src, local)
            except OSError as exc:
                raise KdkitError(f"cannot assemble WordNet from {src} into {local}: {exc}; set "
                                 f"KDKIT_CACHE_DIR to a writable directory or {INSTALL_HINT}") from None
            log.info("assembled WordNet 3.0 for nltk from %s into %s", src, local)
            _add_data_path(local)
            pointer = _find_nltk_wordnet()
            if pointer is None:  # pragma: no cover - defensive
                raise KdkitError(f"assembled WordNet into {local} but nltk cannot find it; {INSTALL_HINT}")
        try:
            reader = _reader_at(pointer)
        except Exception as exc:
            raise KdkitError(f"nltk cannot read WordNet at {pointer}: {exc}; {INSTALL_HINT}") from None
        if cache_dir is None:
            _READER = reader
        return reader


def reset() -> None:
    """Forget the memoised reader (tests)."""
    global _READER
    with _LOCK:
        _READER = None
