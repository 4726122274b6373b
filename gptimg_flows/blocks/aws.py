"""prefect-aws's `S3Bucket` as an archive (the `gptimg-flows[aws]` extra): a team that already
holds its bucket as a block names it instead of copying its keys into an `ImageArchive`.

The bucket and its folder are the archive's root; its `AwsCredentials` or `MinIOCredentials`
give the keys, region and endpoint, handed to s3fs as storage options in memory (the Archive's
repr hides them; sidecars, job records and artifacts never hold them).
"""

from __future__ import annotations

from typing import Any

from gptimg_flows.archive.store import LINK_EXPIRY_SECONDS, Archive
from gptimg_flows.errors import InvalidRequest

try:
    from prefect_aws import S3Bucket
except ImportError:  # the extra is not installed
    S3Bucket = None  # type: ignore[assignment,misc]

__all__ = ["S3_BUCKET_PREFIX", "S3Bucket", "archive_of_bucket", "is_s3_bucket", "load_s3_bucket"]

#: `archive="s3-bucket/NAME"` names a saved prefect-aws S3Bucket block.
S3_BUCKET_PREFIX = "s3-bucket/"
INSTALL_HINT = "install the extra: pip install 'gptimg-flows[aws]'"


def is_s3_bucket(value: object) -> bool:
    return S3Bucket is not None and isinstance(value, S3Bucket)


async def load_s3_bucket(name: str) -> Any:
    """The saved S3Bucket block `name`, or a refusal that says what to install or save."""
    if S3Bucket is None:
        raise InvalidRequest(
            f"archive: {name!r} names a prefect-aws S3Bucket block, and prefect-aws is not "
            f"installed; {INSTALL_HINT}",
            field="archive",
        )
    try:
        return await S3Bucket.aload(name)
    except ValueError:
        raise InvalidRequest(
            f"archive: no saved S3Bucket block named {name!r}", field="archive"
        ) from None


def archive_of_bucket(
    bucket: Any,
    *,
    public_base_url: str | None = None,
    link_expiry_seconds: int = LINK_EXPIRY_SECONDS,
    read_options: dict[str, dict[str, Any]] | None = None,
) -> Archive:
    """The Archive an S3Bucket block describes."""
    folder = (bucket.bucket_folder or "").strip("/")
    basepath = f"s3://{bucket.bucket_name}" + (f"/{folder}" if folder else "")
    return Archive(
        basepath,
        storage_options_of(bucket.credentials),
        public_base_url=public_base_url,
        link_expiry_seconds=link_expiry_seconds,
        read_options=read_options,
    )


def storage_options_of(credentials: Any) -> dict[str, Any]:
    """s3fs options from prefect-aws credentials (MinIO's root user and password are an
    access key pair on an endpoint of the team's own)."""
    options: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if hasattr(credentials, "minio_root_user"):
        options["key"] = credentials.minio_root_user
        options["secret"] = credentials.minio_root_password.get_secret_value()
    else:
        if credentials.aws_access_key_id:
            options["key"] = credentials.aws_access_key_id
        if credentials.aws_secret_access_key is not None:
            options["secret"] = credentials.aws_secret_access_key.get_secret_value()
        if credentials.aws_session_token:
            options["token"] = credentials.aws_session_token
        if credentials.profile_name:
            options["profile"] = credentials.profile_name
    if credentials.region_name:
        client["region_name"] = credentials.region_name
    params = credentials.aws_client_parameters
    if params is not None:
        if params.endpoint_url:
            client["endpoint_url"] = params.endpoint_url
        if params.verify_cert_path:
            client["verify"] = str(params.verify_cert_path)
        elif params.verify is False:
            client["verify"] = False
        if params.use_ssl is False:
            options["use_ssl"] = False
    if client:
        options["client_kwargs"] = client
    return options
