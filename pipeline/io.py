"""Small, shared file helpers: strict text reading, reading tables (whole or in chunks) and atomic writes
(temp file + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd

from pipeline import provenance
from pipeline.errors import PipelineError

BOM = "\ufeff"


class BadInputFile(PipelineError):
    """A file that cannot be used as input; `reason` is a short machine-readable tag."""

    def __init__(self, path: Path | str, reason: str, detail: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {detail}")


def read_text_strict(path: Path | str) -> str:
    """Decode a file as UTF-8 (BOM allowed), refusing binary or mis-encoded content.

    Line endings are kept as they are so that character offsets point into the file's own text.
    """
    path = Path(path)
    provenance.note_file(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInputFile(path, "missing", "file not found") from None
    return decode_text_strict(raw, path)


def decode_text_strict(raw: bytes, path: Path | str) -> str:
    """`read_text_strict` on bytes already read (e.g. by Spark's binaryFile source); `path` names them in errors."""
    path = Path(path)
    if not raw.strip():
        raise BadInputFile(path, "empty", "file is empty; remove it or give it some text")
    if b"\x00" in raw:
        raise BadInputFile(path, "binary", "looks binary (NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputFile(
            path,
            "not_utf8",
            f"not valid UTF-8 (byte {exc.start}); re-save it as UTF-8, e.g. "
            f"`iconv -f {guess_legacy_encoding(raw)} -t UTF-8 {path.name} > fixed.txt`",
        ) from None
    return text[1:] if text.startswith(BOM) else text


def guess_legacy_encoding(raw: bytes) -> str:
    """The iconv name of the likely encoding of non-UTF-8 bytes: WINDOWS-1256 only when they decode to Arabic.

    Every byte string decodes as Latin-1, and most as cp1256, so the test is whether the cp1256 reading is mostly
    Arabic letters (a Latin-1 file read as cp1256 gives a few stray Arabic letters among Latin ones).
    """
    high = [b for b in raw if b >= 0x80]
    if high:
        try:
            text = raw.decode("cp1256")
        except UnicodeDecodeError:
            text = ""
        arabic = sum(1 for ch in text if "\u0600" <= ch <= "\u06ff")
        if text and arabic >= 0.5 * len(high):
            return "WINDOWS-1256"
    return "ISO-8859-1"


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
        provenance.note_written(target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: Path | str, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def read_json_file(path: Path | str, missing: str) -> dict:
    """A small JSON file of a model directory; a missing or broken one is one PipelineError naming it."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: missing; {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc}); re-train the model") from None


def write_table_atomic(df: pd.DataFrame, target: Path | str) -> Path:
    """Write a table as parquet, CSV or JSON lines, chosen by the file suffix."""
    target = Path(target)
    suffix = target.suffix.lower()
    with atomic_path(target) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif suffix == ".csv":
            df.to_csv(tmp, index=False, encoding="utf-8")
        elif suffix in (".jsonl", ".json"):
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            raise PipelineError(f"{target}: unsupported table format {suffix!r}; use .parquet, .csv or .jsonl")
    return target


TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


def read_table(path: Path | str) -> pd.DataFrame:
    """A whole .parquet / .csv / .jsonl table; CSV cells are read as text (no NaN for empty cells)."""
    path = Path(path)
    provenance.note_file(path)
    if not path.exists():
        raise PipelineError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path, encoding="utf-8", keep_default_na=False, dtype=str)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=True, dtype=False)
    raise PipelineError(f"{path}: unsupported table format {suffix!r}; use .parquet, .csv or .jsonl")


def iter_table_chunks(path: Path | str, rows: int, *, as_text: bool = False) -> Iterator[pd.DataFrame]:
    """A .parquet / .csv / .jsonl table in chunks of `rows` rows, never held whole.

    `as_text=True` (input tables) gives every cell as str, and a missing cell (parquet or JSON null, NaN) as "",
    exactly as CSV gives an empty cell: a null id or text never becomes the string "nan" or "None". A file that
    cannot be read as a table (empty, binary, not UTF-8, malformed) raises BadInputFile with a reason tag and what
    to do about it.
    """
    path = Path(path)
    provenance.note_file(path)
    suffix = path.suffix.lower()
    try:
        if path.stat().st_size == 0:
            raise BadInputFile(path, "empty", "file is empty; remove it or give it some rows")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                # integers with nulls stay integers ("7", not "7.0")
                yield _text_cells(batch.to_pandas(integer_object_nulls=True)) if as_text else batch.to_pandas()
            return
        with open(path, "rb") as fh:
            if b"\x00" in fh.read(1 << 16):
                raise BadInputFile(path, "binary", "looks binary (NUL bytes); give a UTF-8 table")
        if suffix == ".csv":
            reader = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", chunksize=rows)
        else:
            reader = pd.read_json(path, lines=True, dtype=str if as_text else False, encoding="utf-8", chunksize=rows)
        with reader:
            for chunk in reader:
                yield _text_cells(chunk) if as_text else chunk
    except BadInputFile:
        raise
    except UnicodeDecodeError as exc:
        raise BadInputFile(path, "not_utf8", f"not valid UTF-8 (byte {exc.start}); re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise BadInputFile(path, "empty", "table is empty; give it a header and rows") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputFile(path, "bad_table", f"cannot be read as a {suffix} table ({first[:200]})") from None


def _text_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as str; a missing one (None, NaN, NaT) as "", the same for every table format."""
    return frame.astype(str).where(frame.notna(), "").astype(str)


def glob_files(pattern: str) -> list[Path]:
    """The files (not directories) matching a glob pattern (`**` recursive), sorted; recorded for staleness."""
    import glob

    found = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    provenance.note_listing("glob", str(pattern), found)
    return found


def dir_files(directory: Path | str) -> list[Path]:
    """Every file under a directory, recursively, hidden files and folders skipped, sorted; recorded for staleness."""
    directory = Path(directory)
    found = sorted(p for p in directory.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    provenance.note_listing("dir", str(directory), found)
    return found


LISTINGS = {"glob": glob_files, "dir": dir_files}  # how a recorded listing is made again


def backup_file(path: Path | str) -> Path | None:
    """Copy `path` to `path.bak-<n>` before it is rewritten; returns the backup path."""
    path = Path(path)
    if not path.exists():
        return None
    n = 1
    while (backup := path.with_name(f"{path.name}.bak-{n}")).exists():
        n += 1
    shutil.copy2(path, backup)
    return backup
