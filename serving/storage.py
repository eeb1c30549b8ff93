"""Where results live: a local directory or an object store (`s3://`, `gs://`), through pyarrow's filesystems, the
layer Ray Tune and Ray Train use for the same URIs, so one `--out` holds Tune's state, Train's checkpoints, the
evaluations, the matrix and the report alike.

An S3 URI honours the standard AWS environment (`AWS_ENDPOINT_URL` for any S3-compatible store, credentials,
`AWS_DEFAULT_REGION`), as pyarrow's `FileSystem.from_uri` does. A GCS URI takes Google's application default
credentials, or, with `STORAGE_EMULATOR_HOST` set (as Google's own client libraries read it), that GCS-compatible
endpoint without credentials. Ray Tune and Train are handed the same filesystem object (`Location.for_ray`), so
they write where the rest of the run does. A write is whole or absent: on a local disk a temporary
file is renamed over the target; an object store's PUT is atomic already, so a killed run never leaves a torn file.
"""
from __future__ import annotations

import datetime
import fnmatch
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import AfterValidator, BeforeValidator

from serving.errors import EMTError

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def default_cache_dir() -> Path:
    """Where EMT keeps what is costly to recompute (weight digests, llm-judge verdicts, copies of stored
    checkpoints): $EMT_CACHE_DIR or ~/.cache/emt."""
    return Path(os.environ.get("EMT_CACHE_DIR") or Path.home() / ".cache" / "emt")


def is_remote(where: str | Path) -> bool:
    return str(where).split("://", 1)[0].lower() in REMOTE_SCHEMES and "://" in str(where)


def normalise(where: str | Path) -> str:
    """A config's output location as one string: an absolute local path, or a URI kept as written (a `Path` would
    fold `s3://b/x` into `s3:/b/x`). Checks the scheme without touching the store."""
    text = str(where)
    if is_remote(text):
        scheme, rest = text.split("://", 1)
        if not rest.strip("/"):
            raise ValueError(f"{text!r} names no bucket: use {scheme}://BUCKET/PATH")
        return f"{scheme.lower()}://{rest.strip('/')}"
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"{text!r}: unsupported storage scheme; use a local path, s3://BUCKET/PATH or gs://BUCKET/PATH")
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


# an output directory on a local disk or in an object store
OutPath = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, Path) else v), AfterValidator(normalise)]


GCS_EMULATOR = "STORAGE_EMULATOR_HOST"
STORE_HINT = ("Check the URI and, for S3, the AWS environment (AWS_ENDPOINT_URL for an S3-compatible store, "
              "credentials, region); for GCS, the application default credentials (or STORAGE_EMULATOR_HOST for a "
              "GCS-compatible endpoint)")


def _gcs_emulator(host: str) -> pafs.GcsFileSystem:
    """A GCS-compatible endpoint such as fake-gcs-server or the gcloud emulator: anonymous, and failing within
    seconds when it is down rather than after the GCS client's default retry budget (minutes)."""
    scheme, _, endpoint = host.rpartition("://")
    return pafs.GcsFileSystem(anonymous=True, scheme=scheme or "http", endpoint_override=endpoint.rstrip("/"),
                              retry_time_limit=datetime.timedelta(seconds=10))


@lru_cache(maxsize=None)
def _filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    """One client per bucket and process (making one costs a credential lookup)."""
    try:
        if scheme in ("gs", "gcs") and os.environ.get(GCS_EMULATOR):
            return _gcs_emulator(os.environ[GCS_EMULATOR])
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    except (OSError, ValueError, pa.ArrowException) as err:
        raise EMTError(f"cannot open the store {scheme}://{bucket}: {err}. {STORE_HINT}") from None
    return fs


class Location:
    """A file or directory by URI or local path, with the few pathlib operations results need."""

    def __init__(self, where: str | Path | Location) -> None:
        if isinstance(where, Location):
            self.uri, self.fs, self.path = where.uri, where.fs, where.path
            return
        try:
            self.uri = normalise(where)
        except ValueError as err:
            raise EMTError(str(err)) from None
        if is_remote(self.uri):
            scheme, self.path = self.uri.split("://", 1)
            self.fs = _filesystem(scheme, self.path.split("/", 1)[0])
        else:
            self.fs, self.path = pafs.LocalFileSystem(), self.uri

    def _child(self, path: str) -> Location:
        loc = object.__new__(Location)
        loc.fs, loc.path = self.fs, path
        loc.uri = path if self.local else f"{self.uri.split('://', 1)[0]}://{path}"
        return loc

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def for_ray(self) -> dict:
        """`storage_path` and `storage_filesystem` for Ray Tune's and Train's RunConfig (and Tuner.restore): Ray
        then writes through this very client, whatever its endpoint and credentials."""
        return {"storage_path": self.path} if self.local else {"storage_path": self.path, "storage_filesystem": self.fs}

    def __truediv__(self, name: str) -> Location:
        return self._child(f"{self.path.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return self._child(self.path.rstrip("/").rsplit("/", 1)[0])

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """A local location is a path for any API that takes one; a stored one is not."""
        if not self.local:
            raise TypeError(f"{self.uri} is in an object store, not on a local disk")
        return self.path

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def check(self) -> None:
        """Fail now, naming the fix, when the store cannot be read (no such bucket, no credentials, no endpoint),
        rather than after the first hour of work."""
        try:
            self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
            bucket = None if self.local else self.path.split("/", 1)[0]
            missing = bucket is not None and self.fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except OSError as err:
            raise EMTError(f"cannot read {self.uri}: {err}. {STORE_HINT}") from None
        if missing:
            raise EMTError(f"{self.uri}: the bucket {bucket} does not exist; create it first. {STORE_HINT}")

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def mkdir(self) -> None:
        """A local directory (and its parents); object stores have no directories to make."""
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Readers see the old file or the new one, never half of one."""
        if not self.local:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def read_parquet(self, columns: list[str] | None = None, dictionary: tuple[str, ...] = ()) -> pa.Table:
        """The table, or its `columns`; the `dictionary` columns (those present) dictionary-encoded."""
        return pq.read_table(self.path, filesystem=self.fs, columns=columns, read_dictionary=list(dictionary) or None)

    def read_schema(self) -> pa.Schema:
        """A parquet file's schema, from its footer alone."""
        return pq.read_schema(self.path, filesystem=self.fs)

    def write_parquet(self, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(buf.getvalue())

    def write_parquet_slices(self, tables: Iterable[pa.Table]) -> None:
        """One parquet file from `tables` (the first one's schema), written as they come, so a caller holds one slice
        of a large table at a time; whole or absent like every write (a local temporary file, renamed or uploaded).
        At least one table (an empty one gives the file its schema)."""
        local = Path(self.path).parent if self.local else None
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp", dir=local)
        os.close(fd)
        tmp = Path(name)
        try:
            writer = None
            for table in tables:
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
            if writer is None:
                raise ValueError(f"no table to write to {self}")
            writer.close()
            if self.local:
                os.replace(tmp, self.path)
            else:
                with tmp.open("rb") as src, self.fs.open_output_stream(self.path) as dst:
                    shutil.copyfileobj(src, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def _listing(self) -> list[pafs.FileInfo]:
        """Every file below this directory (none if it does not exist): one listing, also of a bucket."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        return [i for i in infos if i.type == pafs.FileType.File]

    def _below(self, path: str) -> str:
        """`path` relative to this directory."""
        return path[len(self.path.rstrip("/")) + 1:]

    def files(self) -> list[Location]:
        """Every file below this directory (none if it does not exist), sorted; temporaries are skipped."""
        return sorted((self._child(i.path) for i in self._listing() if not i.base_name.startswith(".")), key=str)

    def sizes(self) -> dict[str, int]:
        """Size of every file below this directory, by relative path (one listing)."""
        return {self._below(i.path): i.size for i in self._listing()}

    def relative_to(self, root: Location) -> str:
        if not self.path.startswith(root.path.rstrip("/") + "/"):
            raise ValueError(f"{self} is not below {root}")
        return root._below(self.path)

    def glob(self, pattern: str) -> list[Location]:
        """Files below this directory whose relative path matches `pattern` (`*` does not cross a `/`)."""
        depth = pattern.count("/")
        return [f for f in self.files() if (rel := self._below(f.path)).count("/") == depth
                and fnmatch.fnmatchcase(rel, pattern)]

    def is_empty(self) -> bool:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
        return not infos

    def delete(self) -> None:
        """This file or directory tree, if it exists."""
        kind = self._type()
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif kind == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def upload(self, local: Path, last: str | None = None) -> None:
        """A local directory's files to this directory (each file whole, as `write_bytes`); the file named `last`
        goes last, so a reader that waits for it finds every other file in place."""
        files = sorted((p for p in Path(local).rglob("*") if p.is_file()), key=lambda p: (p.name == last, str(p)))
        for f in files:
            (self / f.relative_to(local).as_posix()).write_bytes(f.read_bytes())

    def download(self, cache: Path) -> Path:
        """This directory as a local one: itself when local; else a copy under `cache`, keyed by the URI and every
        file's size and modification time, so a changed directory is fetched anew and an unchanged one never."""
        if self.local:
            return Path(self.path)
        infos = self._listing()
        if not infos:
            raise EMTError(f"{self.uri} holds no files")
        key = hashlib.sha256(self.uri.encode())
        for i in sorted(infos, key=lambda i: i.path):
            key.update(f"{i.path}\0{i.size}\0{i.mtime_ns}\0".encode())
        target = Path(cache) / f"{self.name}-{key.hexdigest()[:16]}"
        if target.is_dir():
            return target
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        for i in infos:
            dest = tmp / self._below(i.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(i.path) as src:
                dest.write_bytes(src.read())
        try:
            os.replace(tmp, target)
        except OSError:  # another process fetched it first
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def local_dir(where: str | Path) -> Path:
    """A directory (a checkpoint, an adapter) as a local one: itself, or its cached copy if it is in a store."""
    return Location(where).download(default_cache_dir() / "store")
