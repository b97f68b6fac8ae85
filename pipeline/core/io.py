"""Small, shared file helpers: strict text reading, reading tables (whole or in chunks), atomic writes
(temp file + rename), and the one way every CSV is written (`CsvStyle`: encoding, rounding, formula neutralising)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from pipeline.core import provenance
from pipeline.core.errors import PipelineError

BOM = "\ufeff"


class BadInputFile(PipelineError):
    """A file that cannot be used as input; `reason` is a short machine-readable tag."""

    def __init__(self, path: Path | str, reason: str, detail: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {detail}")


EMPTY_TEXT = "file is empty; remove it or give it some text"
EMPTY_TABLE = "file is empty; remove it or give it some rows"


def refuse_empty(path: Path | str) -> None:
    """Raise the BadInputFile (`empty`) that reading a file of 0 bytes raises, at the cost of one stat: a run checks
    its inputs this way before it loads a model."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInputFile(path, "missing", "file not found") from None
    if size == 0:
        raise BadInputFile(path, "empty", EMPTY_TABLE if path.suffix.lower() in TABLE_SUFFIXES else EMPTY_TEXT)


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
        raise BadInputFile(path, "empty", EMPTY_TEXT)
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


# ---------------------------------------------------------------- CSV for spreadsheets

# A spreadsheet runs a cell that starts with one of these as a formula when it opens a CSV ("CSV injection"):
# = + - @, and tab / carriage return, which some strip before looking at the next character.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_GUARD = "'"  # shown as text by spreadsheets; a cell that itself starts with it is guarded too (reversible)
# A plain number ("-0.25", "+3", "1e-4") is not a formula: carried numeric columns stay numbers.
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class CsvStyle:
    """How every CSV the pipeline writes is encoded (the `csv` section of conf/config.yaml; these defaults are its
    defaults). Parquet and JSON lines keep full precision and raw text."""

    encoding: str = "utf-8-sig"          # with a byte-order mark: Excel then reads Arabic as UTF-8
    float_digits: int | None = 4         # floats rounded to this many decimals; None = full precision
    neutralise_formulas: bool = True     # text cells a spreadsheet would run as a formula get FORMULA_GUARD first

    @classmethod
    def from_cfg(cls, cfg) -> "CsvStyle":
        """From `cfg.csv` (missing keys keep the defaults). Read unrecorded: how a CSV is written never makes a
        stage's table stale."""
        from omegaconf import OmegaConf

        with provenance.unrecorded():
            section = OmegaConf.select(cfg, "csv", default=None) if cfg is not None else None
            values = OmegaConf.to_container(section, resolve=True) if section is not None else {}
        style = cls(**{k: values[k] for k in ("encoding", "float_digits", "neutralise_formulas") if k in values})
        if style.encoding.lower().replace("_", "-") not in ("utf-8", "utf-8-sig", "utf8"):
            raise PipelineError(f"csv.encoding={style.encoding!r}: choose utf-8-sig (with a byte-order mark, for "
                                "Excel) or utf-8")
        if style.float_digits is not None and int(style.float_digits) < 0:
            raise PipelineError(f"csv.float_digits={style.float_digits}: give a number of decimals ≥ 0, or null")
        return style


def neutralise_cell(text: str) -> str:
    """`text` as a spreadsheet shows it without running it: FORMULA_GUARD in front of a cell starting with a
    formula trigger (unless it is a plain number) or with the guard itself (so `restore_cell` undoes it exactly)."""
    if not text or (text[0] not in FORMULA_TRIGGERS and text[0] != FORMULA_GUARD):
        return text
    if text[0] in "+-" and _PLAIN_NUMBER.fullmatch(text):
        return text
    return FORMULA_GUARD + text


def restore_cell(text: str) -> str:
    """The inverse of `neutralise_cell`, for CSVs this pipeline wrote and reads back (resume, the report)."""
    if len(text) > 1 and text[0] == FORMULA_GUARD and (text[1] in FORMULA_TRIGGERS or text[1] == FORMULA_GUARD):
        return text[1:]
    return text


def _text_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if df[c].dtype == object or isinstance(df[c].dtype, pd.StringDtype)]


def csv_frame(df: pd.DataFrame, style: CsvStyle) -> pd.DataFrame:
    """The cells as `style` writes them: floats rounded, text cells neutralised (header names too)."""
    out = df.copy()
    if style.float_digits is not None:
        floats = [c for c in out.columns if pd.api.types.is_float_dtype(out[c].dtype)]
        if floats:
            out[floats] = out[floats].round(int(style.float_digits))
    if style.neutralise_formulas:
        for column in _text_columns(out):
            out[column] = out[column].map(lambda v: neutralise_cell(v) if isinstance(v, str) else v)
        out.columns = [neutralise_cell(str(c)) for c in out.columns]
    return out


def restore_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A CSV this pipeline wrote, read back: neutralised cells as they were."""
    for column in _text_columns(df):
        df[column] = df[column].map(lambda v: restore_cell(v) if isinstance(v, str) else v)
    df.columns = [restore_cell(str(c)) for c in df.columns]
    return df


def write_csv(df: pd.DataFrame, path: Path | str, style: CsvStyle, *, append: bool = False) -> None:
    """Write (or append, without header and without a second byte-order mark) `df` as CSV in `style`."""
    encoding = style.encoding
    if append and encoding.lower().replace("_", "-") == "utf-8-sig":
        encoding = "utf-8"  # the mark belongs at the start of the file only
    # CRLF line ends (RFC 4180, what spreadsheets write): a cell holding a CR or LF is then always quoted
    csv_frame(df, style).to_csv(path, mode="a" if append else "w", header=not append, index=False, encoding=encoding,
                                lineterminator="\r\n")


def typed_dates(values: pd.Series) -> "object":
    """ISO date text ("" = missing) → a pyarrow array of dates (date32), or of timestamps when some carry a time."""
    import pyarrow as pa

    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    stamps = pd.to_datetime(text.where(text != ""), errors="coerce", format="ISO8601", utc=True).dt.tz_localize(None)
    if (stamps.dropna() == stamps.dropna().dt.normalize()).all():
        return pa.array([None if pd.isna(t) else t.date() for t in stamps], type=pa.date32())
    return pa.array(stamps, type=pa.timestamp("us"), from_pandas=True)


def parquet_table(df: pd.DataFrame, date_columns: Sequence[str] = ()):
    """`df` as a pyarrow table, the `date_columns` it has typed as dates (`typed_dates`). The frame is converted
    first, so that the pandas metadata in the file says dates too (else pandas reads them back as text)."""
    import pyarrow as pa

    typed = {c: typed_dates(df[c]) for c in date_columns if c in df.columns}
    if typed:
        df = df.assign(**{c: array.to_pandas().to_numpy() for c, array in typed.items()})
    table = pa.Table.from_pandas(df, preserve_index=False)
    for column, array in typed.items():  # the arrow type as well, even for a chunk without any date
        table = table.set_column(table.column_names.index(column), column, array)
    return table


def write_table_atomic(df: pd.DataFrame, target: Path | str, *, csv: CsvStyle | None = None,
                       date_columns: Sequence[str] = ()) -> Path:
    """Write a table as parquet, CSV or JSON lines, chosen by the file suffix. CSV is written in `csv` (default:
    `CsvStyle()`); in parquet the `date_columns` (ISO text) are dates."""
    target = Path(target)
    suffix = target.suffix.lower()
    with atomic_path(target) as tmp:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(parquet_table(df, date_columns), tmp)
        elif suffix == ".csv":
            write_csv(df, tmp, csv or CsvStyle())
        elif suffix in (".jsonl", ".json"):
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            raise PipelineError(f"{target}: unsupported table format {suffix!r}; use .parquet, .csv or .jsonl")
    return target


TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


def read_table(path: Path | str, *, restore: bool = False) -> pd.DataFrame:
    """A whole .parquet / .csv / .jsonl table; CSV cells are read as text (no NaN for empty cells), with or without
    a byte-order mark. `restore=True`: a CSV this pipeline wrote, its neutralised cells restored (`restore_cell`)."""
    path = Path(path)
    provenance.note_file(path)
    if not path.exists():
        raise PipelineError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        frame = pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False, dtype=str)
        return restore_frame(frame) if restore else frame
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=True, dtype=False)
    raise PipelineError(f"{path}: unsupported table format {suffix!r}; use .parquet, .csv or .jsonl")


def iter_table_chunks(path: Path | str, rows: int, *, as_text: bool = False,
                      restore: bool = False, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """A .parquet / .csv / .jsonl table in chunks of `rows` rows, never held whole.

    `as_text=True` (input tables) gives every cell as str, and a missing cell (parquet or JSON null, NaN) as "",
    exactly as CSV gives an empty cell: a null id or text never becomes the string "nan" or "None". `restore=True`:
    a CSV this pipeline wrote, its neutralised cells restored. A file that cannot be read as a table (empty, binary,
    not UTF-8, malformed) raises BadInputFile with a reason tag and what to do about it. `columns`: only these
    (a parquet file reads no other; CSV and JSON lines parse the rows and keep these).
    """
    path = Path(path)
    provenance.note_file(path)
    keep = list(columns) if columns is not None else None
    suffix = path.suffix.lower()
    try:
        refuse_empty(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=keep):
                # integers with nulls stay integers ("7", not "7.0")
                yield _text_cells(batch.to_pandas(integer_object_nulls=True)) if as_text else batch.to_pandas()
            return
        with open(path, "rb") as fh:
            if b"\x00" in fh.read(1 << 16):
                raise BadInputFile(path, "binary", "looks binary (NUL bytes); give a UTF-8 table")
        if suffix == ".csv":
            reader = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", chunksize=rows,
                                 usecols=keep)
        else:
            reader = pd.read_json(path, lines=True, dtype=str if as_text else False, encoding="utf-8", chunksize=rows)
        with reader:
            for chunk in reader:
                chunk = chunk[keep] if keep is not None else chunk
                chunk = _text_cells(chunk) if as_text else chunk
                yield restore_frame(chunk) if restore and suffix == ".csv" else chunk
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


def file_digest(path: Path | str) -> str:
    """The first 16 hex digits of a file's SHA-256: the digest a run records of a data file or lexicon."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
