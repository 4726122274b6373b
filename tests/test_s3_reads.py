"""A team's bucket at its own endpoint, with the keys only in the ImageArchive block (none in
the environment): prompt files and masks in the bucket are read with the archive's options,
and a read that lacks credentials is refused clearly before anything is paid."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from PIL import Image

from gptimg_flows import (
    ImageArchive,
    batch_generate,
    estimate_cost,
    generate_edit_archive,
)
from gptimg_flows.errors import InvalidRequest

pytestmark = pytest.mark.usefixtures("prefect_server")

CSV = "name,style,sku\nteapot,studio,T-1\nkettle,outdoor,K-2\nmug,studio,M-3\n"


@pytest.fixture
def keys_only_in_the_block(
    monkeypatch: pytest.MonkeyPatch, s3_archive: tuple[str, dict[str, Any]], s3_client: Any
) -> tuple[ImageArchive, str, Any]:
    """(the archive block, its bucket, a boto3 client) with no AWS_* variable set."""
    basepath, options = s3_archive
    client = s3_client
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata either
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    public = {k: v for k, v in options.items() if k not in ("key", "secret")}
    secret = json.dumps({"key": options["key"], "secret": options["secret"]})
    block = ImageArchive(basepath=basepath, storage_options=public, secret_storage_options=secret)
    bucket = basepath.removeprefix("s3://").split("/")[0]
    return block, bucket, client


async def test_a_batch_from_a_csv_in_the_bucket_with_a_template(
    keys_only_in_the_block: tuple[ImageArchive, str, Any], provider_block: Any, emulator: Any
) -> None:
    block, bucket, client = keys_only_in_the_block
    client.put_object(Bucket=bucket, Key="inputs/products.csv", Body=CSV.encode())
    prompts = f"s3://{bucket}/inputs/products.csv"
    kwargs: dict[str, Any] = {
        "prompts": prompts,
        "archive": block,
        "prompt_template": "product shot of a {name}, {style} light",
        "size": "1024x1024",
    }
    result = await batch_generate(provider=provider_block("scenario"), **kwargs)
    assert not result.failures and len(result.images) == 3
    assert [i.extra["sku"] for i in result.images] == ["T-1", "K-2", "M-3"]
    assert all(i.uri.startswith(f"s3://{bucket}/") for i in result.images)
    again = await batch_generate(provider=provider_block("scenario"), **kwargs)
    assert all(i.from_archive for i in again.images)
    assert len(emulator.ledger()["submissions"]) == 3

    estimate = await estimate_cost(
        prompts=prompts,
        provider="offline",
        prompt_template=kwargs["prompt_template"],
        archive=block,
    )
    assert estimate.requests == 3


async def test_a_masked_edit_with_the_mask_in_the_bucket(
    keys_only_in_the_block: tuple[ImageArchive, str, Any], provider_block: Any, emulator: Any
) -> None:
    block, bucket, client = keys_only_in_the_block
    mask = Image.new("RGBA", (1024, 1024), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 512, 1024))
    import io

    buf = io.BytesIO()
    mask.save(buf, "PNG")
    client.put_object(Bucket=bucket, Key="masks/left.png", Body=buf.getvalue())
    result = await generate_edit_archive(
        prompt="a lighthouse",
        edit_prompt="a storm on the left",
        mask=f"s3://{bucket}/masks/left.png",
        provider=provider_block("openai"),
        archive=block,
        size="1024x1024",
    )
    assert result.edited and result.edited[0].uri.startswith(f"s3://{bucket}/")


async def test_a_prompt_file_read_without_credentials_is_refused_clearly_before_paying(
    keys_only_in_the_block: tuple[ImageArchive, str, Any],
    provider_block: Any,
    emulator: Any,
    archive_dir: Any,
) -> None:
    """The prompt file is in another bucket than a local archive knows keys for: the error
    names the URL, whose options were used, and what to set, not a botocore traceback."""
    _, bucket, client = keys_only_in_the_block
    client.put_object(Bucket=bucket, Key=f"{uuid.uuid4().hex}.csv", Body=CSV.encode())
    with pytest.raises(InvalidRequest) as caught:
        await batch_generate(
            prompts=f"s3://{bucket}/products.csv",
            provider=provider_block("scenario"),
            archive=str(archive_dir),
        )
    message = str(caught.value)
    assert f"s3://{bucket}/products.csv" in message
    assert "credentials" in message and "storage options" in message
    assert "Traceback" not in message and "testing" not in message
    assert emulator.ledger()["submissions"] == []


# -- prefect-aws blocks as archives (the aws extra) --------------------------------------------


def _minio_bucket(s3_archive: tuple[str, dict[str, Any]]) -> Any:
    from prefect_aws import MinIOCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    basepath, options = s3_archive
    bucket, _, folder = basepath.removeprefix("s3://").partition("/")
    creds = MinIOCredentials(
        minio_root_user=options["key"],
        minio_root_password="minio-password-3141592653",  # moto checks no signature
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(
            endpoint_url=options["client_kwargs"]["endpoint_url"]
        ),
    )
    return S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=creds)


async def test_a_prefect_aws_s3_bucket_with_minio_credentials_is_an_archive(
    keys_only_in_the_block: tuple[ImageArchive, str, Any],
    s3_archive: tuple[str, dict[str, Any]],
    provider_block: Any,
    emulator: Any,
) -> None:
    """As an object, as `s3-bucket/NAME`, as a plain saved name, and named by an ImageArchive:
    the bucket's folder is the root, the keys come from the MinIO credentials (no AWS_*), the
    artifact's link opens, and no key lands in a sidecar, a job record or the artifact."""
    import httpx

    from gptimg_flows import generate_images
    from tests.test_artifacts import latest

    _, bucket, client = keys_only_in_the_block
    s3 = _minio_bucket(s3_archive)
    name = f"content-bucket-{uuid.uuid4().hex[:8]}"
    await s3.save(name)
    await ImageArchive(s3_bucket=name).save(f"{name}-archive")
    secret = s3.credentials.minio_root_password.get_secret_value()
    kwargs = {"prompt": "a bucket of our own", "size": "1024x1024"}
    [made] = await generate_images(provider=provider_block("scenario"), archive=s3, **kwargs)
    assert made.uri.startswith(f"s3://{bucket}/{s3.bucket_folder}/images/")
    for archive in (f"s3-bucket/{name}", name, f"{name}-archive"):
        [again] = await generate_images(
            provider=provider_block("scenario"), archive=archive, **kwargs
        )
        assert again.from_archive and again.uri == made.uri
    assert len(emulator.ledger()["submissions"]) == 1

    body = (await latest("generate-images"))["data"]
    [url] = re.findall(r"\[open\]\((http[^)]+)\)", body)
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200 and fetched.content[:4] == b"\x89PNG"
    assert secret not in body
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    records = [o["Key"] for o in listed if o["Key"].endswith(".json")]
    assert records and not any(
        secret.encode() in client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in records
    )
    assert secret not in repr(s3) and "minio_root_password" not in str(made.model_dump())


async def test_without_the_aws_extra_a_bucket_name_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gptimg_flows.blocks import aws, resolve

    monkeypatch.setattr(aws, "S3Bucket", None)
    monkeypatch.setattr(resolve, "S3Bucket", None)
    with pytest.raises(InvalidRequest, match=r"pip install 'gptimg-flows\[aws\]'"):
        await resolve.resolve_archive("s3-bucket/content-bucket")


def test_gptimg_blocks_create_can_name_an_s3_bucket_block() -> None:
    """`gptimg blocks create --archive s3-bucket/NAME` saves an ImageArchive naming the bucket
    block (its keys stay in it), so deployments keep `archive: content-archive`."""
    from gptimg_flows.blocks.from_env import plan_from_env

    planned, _ = plan_from_env({}, prefix="content", archive="s3-bucket/content-bucket")
    [archive] = planned
    assert archive.block is ImageArchive and archive.name == "content-archive"
    assert archive.values == {"s3_bucket": "content-bucket"}


async def test_another_store_is_read_with_its_own_credentials_only_when_asked(
    keys_only_in_the_block: tuple[ImageArchive, str, Any],
    s3_archive: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    archive_dir: Any,
) -> None:
    """With a local archive an s3:// prompt file is another store: read anonymously by
    default (refused above), with the environment's keys only after the documented opt-in."""
    from gptimg_flows.media.reads import AMBIENT_CREDENTIALS_ENV

    _, bucket, client = keys_only_in_the_block
    _, options = s3_archive
    client.put_object(Bucket=bucket, Key="rows.csv", Body=CSV.encode())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["client_kwargs"]["endpoint_url"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    source = f"s3://{bucket}/rows.csv"
    monkeypatch.setenv(AMBIENT_CREDENTIALS_ENV, "1")
    estimate = await estimate_cost(prompts=source, provider="offline", prompt_template="{name}")
    assert estimate.requests == 3


async def test_another_stores_keys_can_live_in_the_archive_block_too(
    keys_only_in_the_block: tuple[ImageArchive, str, Any],
    s3_archive: tuple[str, dict[str, Any]],
    provider_block: Any,
    emulator: Any,
    archive_dir: Any,
) -> None:
    """A local archive whose block carries the bucket's options for reads
    (`read_storage_options`): the team's prompt file is read with them, no AWS_* and no opt-in,
    and the keys stay out of the results."""
    _, bucket, client = keys_only_in_the_block
    _, options = s3_archive
    client.put_object(Bucket=bucket, Key="team/rows.csv", Body=CSV.encode())
    block = ImageArchive(
        basepath=str(archive_dir), read_storage_options=json.dumps({"s3": options})
    )
    result = await batch_generate(
        prompts=f"s3://{bucket}/team/rows.csv",
        prompt_template="{name}, {style} light",
        provider=provider_block("scenario"),
        archive=block,
        size="1024x1024",
    )
    assert not result.failures and len(result.images) == 3
    assert "testing" not in result.model_dump_json()
