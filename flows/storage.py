"""Where the flows keep their fit cache and results: local (``$PREFECT_HOME/storage``, the
default) or a Prefect storage block chosen at deploy time, so that any worker hits the cache.

``KQUANT_RESULT_STORAGE`` (a job variable of the deployments, set by ``deploy/deploy.sh``)
names the block by its slug, e.g. ``s3-bucket/kquant-results``; the fit tasks persist
their results there and look their cache keys up there.

``python -m flows.storage`` saves such blocks on the server at ``PREFECT_API_URL``: an
``S3Bucket`` (prefect-aws; ``kquant[aws]``) whose credentials are an ``AwsCredentials``
block referenced by name, or none (then boto3's own chain: ``AWS_*`` environment
variables, a profile, an instance role)::

    python -m flows.storage --bucket my-bucket --folder kquant-cache \\
        --credentials kquant-aws --access-key-id ... --secret-access-key ...
    KQUANT_RESULT_STORAGE=s3-bucket/kquant-results deploy/deploy.sh
"""

from __future__ import annotations

import argparse
import os
import sys

ENV = "KQUANT_RESULT_STORAGE"
#: The S3Bucket block's default name.
DEFAULT_NAME = "kquant-results"


def result_storage() -> str | None:
    """The block slug in ``$KQUANT_RESULT_STORAGE``, or None (Prefect's default storage).

    Empty and unresolved ``prefect.yaml`` templates (``{{ $VAR }}``) count as unset.
    """
    value = (os.environ.get(ENV) or "").strip()
    if not value or "{{" in value:
        return None
    return value


def save_s3_blocks(
    bucket: str,
    *,
    folder: str = "",
    name: str = DEFAULT_NAME,
    credentials: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> str:
    """Save an ``S3Bucket`` block named ``name`` (and, with ``credentials``, an
    ``AwsCredentials`` block of that name that it references); return its slug for
    ``KQUANT_RESULT_STORAGE``. Existing blocks of these names are replaced."""
    from prefect_aws import AwsCredentials, S3Bucket

    client_parameters = {"endpoint_url": endpoint_url} if endpoint_url else {}
    creds = AwsCredentials(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=region,
        aws_client_parameters=client_parameters,
    )
    if credentials:
        creds.save(credentials, overwrite=True)
        creds = AwsCredentials.load(credentials)  # referenced by name, not copied
    S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=creds).save(name, overwrite=True)
    return f"s3-bucket/{name}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flows.storage",
        description="Save the S3Bucket block (and AwsCredentials block) that hold the flows' "
        "fit cache and results; deploy with KQUANT_RESULT_STORAGE=<the printed slug>.",
    )
    p.add_argument("--bucket", required=True)
    p.add_argument("--folder", default="", help="prefix inside the bucket")
    p.add_argument("--name", default=DEFAULT_NAME, help="name of the S3Bucket block")
    p.add_argument(
        "--credentials",
        default=None,
        metavar="NAME",
        help="save the credentials as an AwsCredentials block of this name, referenced by "
        "the bucket block (without it: boto3's chain, e.g. AWS_* on the workers)",
    )
    p.add_argument("--access-key-id", default=os.environ.get("AWS_ACCESS_KEY_ID"))
    p.add_argument("--secret-access-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY"))
    p.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION"))
    p.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    a = p.parse_args(argv)
    try:
        slug = save_s3_blocks(
            a.bucket,
            folder=a.folder,
            name=a.name,
            credentials=a.credentials,
            access_key_id=a.access_key_id if a.credentials else None,
            secret_access_key=a.secret_access_key if a.credentials else None,
            region=a.region,
            endpoint_url=a.endpoint_url,
        )
    except ImportError:
        print(
            "flows.storage: error: needs prefect-aws (pip install 'kquant[aws]')", file=sys.stderr
        )
        return 2
    except Exception as exc:
        print(f"flows.storage: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(slug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
