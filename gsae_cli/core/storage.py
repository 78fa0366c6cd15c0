"""Where an artifact lives: a local folder (a `pathlib.Path`) or a prefix on S3-compatible object
storage (a universal_pathlib `UPath` over fsspec's s3fs), and the few operations whose two forms
differ. Everything else (`/`, `is_file`, `read_text`, `glob`, `unlink`) is the pathlib API, which
both kinds share, so the store code reads the same for either.

Why object storage keeps the store's guarantees without renames or fsync: a PUT makes an object
appear whole or not at all (a multipart upload only on completion), so "write the file, then
the progress record, then COMPLETE" gives the same crash safety as write-temp-then-rename does
on a disk. Credentials and the endpoint come from the standard AWS variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for MinIO, R2, Ceph, ...), read by
botocore itself, as the AWS CLI and boto3 read them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from gsae_cli.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from upath import UPath

Location = Path | Any  # Any: a upath.UPath (imported only when an s3:// URL is used)

_SCHEMES = ("s3",)


def location(where: Any) -> Location:
    """`where` (a path, a Path, a UPath, or an s3:// URL) as a Path or UPath."""
    if isinstance(where, Path) or is_remote(where):
        return where
    where = os.fspath(where)
    if "://" not in where:
        return Path(where).expanduser()
    scheme, _, rest = where.partition("://")
    if scheme == "file":
        return Path(rest)
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"{where!r}: gsae stores data on local paths or on S3-compatible object storage "
            f"(s3://bucket/prefix), not {scheme}://. Give a path or an s3:// URL."
        )
    if not rest.split("/")[0]:
        raise ConfigError(f"{where!r} names no bucket; write s3://BUCKET/PREFIX.")
    try:
        import s3fs  # noqa: F401  (fsspec finds it by protocol; import here for a clear error)
        from upath import UPath
    except ImportError:
        raise ConfigError(
            f"{where!r} is on S3, which needs the optional packages s3fs and universal_pathlib: "
            "pip install 'gsae[s3]' (the test extra includes them)."
        ) from None
    # No listings cache: a cached listing would answer "not there yet" forever to a rank polling
    # for another rank's progress file (s3fs caches listings without expiry).
    return UPath(where.rstrip("/"), use_listings_cache=False)


def is_remote(p: Any) -> TypeGuard[UPath]:
    """Whether `p` is a location on object storage (a UPath with a remote protocol)."""
    return getattr(p, "protocol", "") not in ("", "file", "local")


def fsync(p: Location) -> None:
    """Flush a local file or folder entry to disk; object stores have nothing to flush."""
    if is_remote(p):
        return
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(p: Location) -> bytes:
    """The whole file; on object storage one GET, so a file being replaced is read whole, old or
    new (a streamed read would fail when the object changes under it)."""
    return p.fs.cat_file(p.path) if is_remote(p) else p.read_bytes()


def rmtree(p: Location, first: tuple[str, ...] = ()) -> None:
    """Remove a folder (or prefix) and everything under it; nothing if it does not exist. On object
    storage the files named in `first` (completion markers) go before the rest, which is deleted in
    no particular order: a kill midway must not leave a marker over missing data."""
    if is_remote(p):
        for name in first:
            (p / name).unlink(missing_ok=True)
        if exists(p):
            p.fs.rm(p.path, recursive=True)
        return
    shutil.rmtree(p, ignore_errors=True)


def zarr_store(p: Location, read_only: bool = False):
    """zarr's own store for `p`: LocalStore on disk, FsspecStore (async s3fs) on object storage."""
    if not is_remote(p):
        from zarr.storage import LocalStore

        return LocalStore(str(p), read_only=read_only)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(p), storage_options=dict(p.storage_options), read_only=read_only)


def access_error(e: BaseException) -> bool:
    """Whether `e` is a failure to reach the bytes (I/O, network, credentials), as opposed to bytes
    that were reached and are wrong (decoding, checksum): the first calls for a retry or a fix of
    the storage, never for deleting data."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp")


def exists(p: Location) -> bool:
    """Whether `p` exists, strictly: fsspec's own exists/isfile answer False on *any* error, which
    would read a network failure as a missing file. Only "not found" is False here; other
    failures raise StoreError."""
    if not is_remote(p):
        return p.exists()
    try:
        p.fs.info(p.path)
        return True
    except FileNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001
        raise StoreError(explain(e, p, "the activation store")) from None


def files_under(p: Location) -> set[str]:
    """The relative paths of every file under `p` (one listing on object storage, not a request
    per file); raises StoreError on a failure to list."""
    if not is_remote(p):
        return {str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()} if p.is_dir() else set()
    try:
        root = p.path.rstrip("/") + "/"
        return {f[len(root) :] for f in p.fs.find(p.path)}
    except FileNotFoundError:
        return set()
    except Exception as e:  # noqa: BLE001
        raise StoreError(explain(e, p, "the activation store")) from None


def check_reachable(p: Location, what: str) -> None:
    """For an object-storage location, one cheap request (the bucket's metadata) so that missing
    credentials, an unreachable endpoint or a missing bucket fail at once with one clear message
    instead of deep inside a write. Local paths: nothing to check."""
    if not is_remote(p):
        return
    bucket = p.path.split("/")[0]
    try:
        p.fs.info(bucket)
    except Exception as e:  # noqa: BLE001 - classified below
        raise StoreError(explain(e, p, what)) from None


def explain(e: BaseException, p: Location, what: str) -> str:
    """One paragraph naming what went wrong with object storage at `p`, and the fix."""
    name = type(e).__name__
    bucket = getattr(p, "path", str(p)).split("/")[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's default endpoint"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        why = (
            "no S3 credentials were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile "
            "in ~/.aws), and AWS_ENDPOINT_URL for a store that is not AWS itself"
        )
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError"):
        why = f"the endpoint {endpoint} cannot be reached ({e}); check AWS_ENDPOINT_URL and that the server is up"
    elif isinstance(e, FileNotFoundError):
        why = f"the bucket {bucket!r} does not exist at {endpoint}; create it (aws s3 mb s3://{bucket}) or fix the URL"
    elif isinstance(e, PermissionError) or "AccessDenied" in str(e) or "Forbidden" in str(e):
        why = (
            f"the credentials were refused for bucket {bucket!r} ({e}); check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY and the bucket's permissions"
        )
    else:
        why = f"{name}: {e}"
    return f"Cannot use {what} at {p}: {why}."
