"""The `aws` provider: AWS Secrets Manager through one aiobotocore client per provider.

The only module that imports aiobotocore/botocore (300-400 ms): it is loaded
when an `aws` provider is configured, never for a file-only `render --once`.

Requests, per pass of N distinct secrets (measured against moto, see
tests/test_aws.py::test_api_calls_per_pass):

- AWSCURRENT reads (no version, no stage): BatchGetSecretValue, at most 20
  ids a call (AWS's maximum; moto does not enforce it, we chunk), the chunks
  sent concurrently within `self.limits`: ceil(N / 20) calls. Per-id errors
  in the answer's `Errors` fail only their own reference.
- A VersionId or a staging label (AWSPREVIOUS, AWSPENDING, a custom label):
  one GetSecretValue each.
- Where the policy does not grant `secretsmanager:BatchGetSecretValue`, the
  batch answers AccessDeniedException as a whole: that is remembered for the
  provider's lifetime (logged once, `provider.batch_denied`) and every read
  is one GetSecretValue, which is all such a host's policy allows.

`refresh` (the agent's rotation check) reads AWSCURRENT secrets by batch too
and compares VersionId (ceil(N / 20) calls for N secrets, new values included,
against N DescribeSecret calls that would still need a read after a change).
A pinned VersionId never changes (no call). A staging label is checked with
one DescribeSecret per secret (VersionIdsToStages, and NextRotationDate for
`check_after`), then read only if the label moved.

Retries: botocore's own retries are OFF (`total_max_attempts=1`) and every
request goes through `BaseProvider.request`, whose `retry.retrying` retries
throttling and unavailability with backoff and jitter within the pass's
deadline, so retries are never stacked (botocore's default would multiply
ours by 3-5). Each attempt, retries included, takes a slot of `self.limits`;
a batch's chunks and pages are separate requests, each with its own slot
(so the chunks of a large read go out concurrently, up to max_concurrency).

Lifecycle: the region and profile are checked when the provider is built (a
setup error naming what to set, before anything runs); the aiobotocore
client is created by the first request, not by `open`, because creating it
resolves credentials (the instance metadata service, an SSO cache, a
credential_process): a failure there fails this provider's references, as
AccessDenied, and never the opening of the others.

One spelling per secret (`canonical`): a stage of AWSCURRENT with no version
is the same as neither. A name and its full ARN are one secret, but the
name part of an ARN cannot be trusted by parsing alone: a full ARN ends in a
random 6-character suffix (`...:secret:prod/db-AbCdEf`), a partial ARN does
not, and an ARN in another account or region with the same name is another
secret. So an ARN is mapped to a name only once this provider has read that
name and AWS answered with that exact ARN (a read *by ARN* teaches nothing: it
may be another account's secret of the same name); within a fetch, an ARN whose name part
(the suffix stripped) is also asked for by name piggybacks on the name's read
and is served from it only when the answer's ARN is exactly that ARN (else it
is read on its own). Either way a name and its ARN cost one read.

Errors: `_translate` is the one place botocore's exceptions become our kinds,
by error code (never by HTTP status: moto answers ResourceNotFound with 404,
AWS with 400). AWS's messages name secrets, never values; a message is cut at
300 characters all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions as bce
import msgspec
from aiobotocore.session import AioSession
from botocore.config import Config as BotoConfig
from botocore.loaders import Loader, create_loader
from botocore.parsers import ResponseParserError

from smagent.config import AwsProviderConfig
from smagent.logging import get_logger
from smagent.providers import ProviderSetupError
from smagent.providers.base import (
    AccessDenied,
    BadValue,
    BaseProvider,
    FetchResult,
    NotFound,
    ProviderBug,
    ProviderError,
    RefreshResult,
    SecretValue,
    Throttled,
    Unavailable,
    Unchanged,
)
from smagent.references import SecretRef

log = get_logger()

BATCH_MAX = 20
"""BatchGetSecretValue's maximum of ids per call (AWS enforces it; moto does not)."""
CURRENT = "AWSCURRENT"
MAX_MESSAGE = 300

ERROR_CODES: dict[str, type[ProviderError]] = {
    # the secret, version or stage does not exist (or is scheduled for deletion)
    "ResourceNotFoundException": NotFound,
    "InvalidRequestException": NotFound,  # e.g. "marked for deletion"
    "InvalidParameterException": NotFound,  # e.g. a malformed VersionId
    "ValidationException": NotFound,
    # the credentials may not read it, or are not accepted at all
    "AccessDeniedException": AccessDenied,
    "AccessDenied": AccessDenied,
    "DecryptionFailure": AccessDenied,  # no kms:Decrypt on the secret's customer-managed key
    "KMSAccessDeniedException": AccessDenied,
    "UnrecognizedClientException": AccessDenied,  # unknown access key id
    "InvalidClientTokenId": AccessDenied,
    "InvalidSignatureException": AccessDenied,  # wrong secret access key
    "SignatureDoesNotMatch": AccessDenied,
    "IncompleteSignature": AccessDenied,
    "MissingAuthenticationToken": AccessDenied,
    "ExpiredTokenException": AccessDenied,
    "ExpiredToken": AccessDenied,
    # slow down
    "ThrottlingException": Throttled,
    "Throttling": Throttled,
    "TooManyRequestsException": Throttled,
    "RequestLimitExceeded": Throttled,
    "429": Throttled,
    # the service (or a proxy in front of it) is not answering properly
    "InternalServiceError": Unavailable,
    "InternalFailure": Unavailable,
    "ServiceUnavailable": Unavailable,
    "ServiceUnavailableException": Unavailable,
    "RequestTimeout": Unavailable,
    "RequestTimeoutException": Unavailable,
    "500": Unavailable,
    "502": Unavailable,
    "503": Unavailable,
    "504": Unavailable,
    # our own request was wrong: a bug here, not the user's
    "InvalidNextTokenException": ProviderBug,
}
"""botocore error codes -> our kinds. An unknown code is a `ProviderBug` (permanent, shown with
AWS's code and words): retrying what we do not understand would hide it."""


class _BatchDenied(Exception):
    """BatchGetSecretValue itself is not allowed: fall back to GetSecretValue."""


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def _translate(exc: Exception, ref: SecretRef | None, endpoint: str) -> ProviderError:
    """The one translation of botocore's exceptions into our kinds (see ERROR_CODES)."""
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "") or "")
        message = _cut(str(error.get("Message", "") or ""))
        kind = ERROR_CODES.get(code, ProviderBug)
        detail = f"{code}: {message}" if message else code
        if kind is ProviderBug and code not in ERROR_CODES:
            detail = f"unexpected AWS error {detail}"
        return kind(ref, detail)
    if isinstance(exc, bce.SSLError):
        return Unavailable(
            ref,
            f"TLS verification of {endpoint} failed ({_cut(str(exc.kwargs.get('error', exc)))}); "
            "check endpoint_url, or install the CA that signed its certificate "
            "(AWS_CA_BUNDLE)",
        )
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return AccessDenied(
            ref,
            f"no usable AWS credentials ({exc}); set a profile, AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, or give the host a role",
        )
    if isinstance(exc, bce.CredentialRetrievalError | bce.TokenRetrievalError):
        return AccessDenied(ref, f"AWS credentials could not be obtained: {_cut(str(exc))}")
    if isinstance(exc, bce.ConnectionError | bce.HTTPClientError):
        return Unavailable(ref, f"cannot reach {endpoint}: {_cut(str(exc))}")
    if isinstance(exc, bce.ParamValidationError):
        return NotFound(ref, f"not a valid AWS request: {_cut(str(exc.kwargs.get('report', '')))}")
    if isinstance(exc, ResponseParserError):  # botocore.parsers': not a BotoCoreError
        return ProviderBug(ref, f"{endpoint} gave an answer that is not Secrets Manager's")
    return ProviderBug(ref, f"unexpected error from aiobotocore ({type(exc).__name__})")


def _arn_name(secret_id: str) -> str | None:
    """The name part of a full Secrets Manager ARN (its 6-character suffix dropped), or None."""
    parts = secret_id.split(":", 6)
    if len(parts) != 7 or parts[0] != "arn" or parts[2] != "secretsmanager":
        return None
    if parts[5] != "secret" or len(parts[6]) < 8 or parts[6][-7] != "-":
        return None
    return parts[6][:-7]


def _timestamp(value: object) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


class _ModelFiles:
    """botocore's data files (service models, endpoints; JSON, some gzipped) decoded by msgspec.

    botocore's own file loader decodes them with json and an OrderedDict hook, and the
    first client of a process reads 1.3 MB of them (endpoints.json alone is 1.2 MB): this
    is ~3x faster (~20 ms of the first request here). Same files, same search paths, the
    same data (plain dicts keep the order too); `exists` and `load_file` are the protocol
    botocore's `Loader` asks of a file loader.
    """

    OPENERS = ((".json", open), (".json.gz", gzip.open))

    def exists(self, file_path: str) -> bool:
        return any(os.path.isfile(file_path + ext) for ext, _ in self.OPENERS)

    def load_file(self, file_path: str) -> Any:
        for ext, opener in self.OPENERS:
            if os.path.isfile(file_path + ext):
                with opener(file_path + ext, "rb") as file:
                    return msgspec.json.decode(file.read())
        return None


def _session(profile: str | None) -> AioSession:
    """An aiobotocore session whose data loader decodes with msgspec (see `_ModelFiles`)."""
    session = AioSession(profile=profile)

    def loader() -> Loader:
        # as botocore's own: its data path, then AWS_DATA_PATH / `data_path` of the profile
        made = create_loader(session.get_config_variable("data_path"))
        made.file_loader = _ModelFiles()
        return made

    session.lazy_register_component("data_loader", loader)
    return session


class AwsProvider(BaseProvider):
    def __init__(self, name: str, config: AwsProviderConfig) -> None:
        super().__init__(name, config)
        self.config = config
        self._session = _session(config.profile)
        try:  # local files only (~/.aws/config, ~/.aws/credentials): nothing is contacted
            self._session.get_scoped_config()  # a named profile must exist
            region = config.region or self._session.get_config_variable("region")
        except bce.ProfileNotFound:
            where = "" if config.profile else " (named by AWS_PROFILE)"
            raise ProviderSetupError(
                name, f"AWS profile {self._session.profile!r}{where} is not in the AWS config files"
            ) from None
        except bce.ConfigParseError as exc:
            raise ProviderSetupError(name, f"the AWS config files cannot be read: {exc}") from None
        if not region:
            raise ProviderSetupError(
                name, "no AWS region: set `region` here, or AWS_DEFAULT_REGION"
            )
        self.region: str = region
        if config.endpoint_url is not None:
            url = urlsplit(config.endpoint_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ProviderSetupError(
                    name,
                    f"endpoint_url: expected an http:// or https:// URL, "
                    f"got {config.endpoint_url!r}",
                )
        self._client: Any = None
        self._opening = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()
        self._batch_denied = False
        self._batch_known = False
        """Whether BatchGetSecretValue has been answered (allowed or denied) at least once."""
        self._arn_names: dict[str, str] = {}
        """Full ARN -> secret name, as AWS answered them (what `canonical` may trust)."""

    @property
    def endpoint(self) -> str:
        return self.config.endpoint_url or f"Secrets Manager in {self.region}"

    # --- lifecycle -------------------------------------------------------------------------------

    async def _connected(self) -> Any:
        """The one client, created by the first request that needs it (see the docstring)."""
        async with self._opening:
            if self._client is None:
                boto_config = BotoConfig(
                    # ours retry (BaseProvider.request): botocore's must not stack on them
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    max_pool_connections=self.limits.max_concurrency,
                    connect_timeout=10,
                    read_timeout=30,
                )
                self._client = await self._stack.enter_async_context(
                    self._session.create_client(
                        "secretsmanager",
                        region_name=self.region,
                        endpoint_url=self.config.endpoint_url,
                        config=boto_config,
                    )
                )
            return self._client

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()

    # --- one spelling per secret -----------------------------------------------------------------

    def canonical(self, ref: SecretRef) -> SecretRef:
        if ref.stage == CURRENT and ref.version is None:
            ref = msgspec.structs.replace(ref, stage=None)
        name = self._arn_names.get(ref.secret_id)
        return ref if name is None else msgspec.structs.replace(ref, secret_id=name)

    # --- reads -----------------------------------------------------------------------------------

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        wanted = set(refs)
        riders: dict[SecretRef, SecretRef] = {}
        """An ARN ref -> the name ref whose read may serve it too (checked after the read)."""
        for ref in refs:
            name = _arn_name(ref.secret_id)
            if name is not None and msgspec.structs.replace(ref, secret_id=name) in wanted:
                riders[ref] = msgspec.structs.replace(ref, secret_id=name)
        results = await self._read([ref for ref in refs if ref not in riders])
        alone = []
        for arn_ref, name_ref in riders.items():
            found = results.get(name_ref)
            if isinstance(found, SecretValue) and self._arn_names.get(arn_ref.secret_id) == (
                name_ref.secret_id
            ):
                results[arn_ref] = found
            else:
                alone.append(arn_ref)
        if alone:
            results.update(await self._read(alone))
        return results

    async def _read(self, refs: Sequence[SecretRef]) -> dict[SecretRef, FetchResult]:
        current = [r for r in refs if r.version is None and r.stage is None]
        others = [r for r in refs if r.version is not None or r.stage is not None]
        results, read = await asyncio.gather(self._get_many(others), self._read_current(current))
        results.update(read)
        return results

    async def _read_current(self, refs: Sequence[SecretRef]) -> dict[SecretRef, FetchResult]:
        """AWSCURRENT reads: batches of 20 sent at once, or GetSecretValue where batch is denied.

        Until one batch call has been answered, the first chunk goes alone: a policy
        without BatchGetSecretValue then costs one denied call, not one per chunk (each is
        an AccessDenied event in CloudTrail, which security teams alert on).
        """
        chunks = [refs[i : i + BATCH_MAX] for i in range(0, len(refs), BATCH_MAX)]
        results: dict[SecretRef, FetchResult] = {}
        if not self._batch_known and len(chunks) > 1:
            results.update(await self._batch(chunks[0]))
            chunks = chunks[1:]
        if self._batch_denied:
            jobs = [self._get_many([ref for chunk in chunks for ref in chunk])]
        else:
            jobs = [self._batch(chunk) for chunk in chunks]
        for found in await asyncio.gather(*jobs):
            results.update(found)
        return results

    async def _get_many(self, refs: Sequence[SecretRef]) -> dict[SecretRef, FetchResult]:
        found = await asyncio.gather(*(self._get(ref) for ref in refs))
        return dict(zip(refs, found, strict=True))

    async def _get(self, ref: SecretRef) -> FetchResult:
        params: dict[str, str] = {"SecretId": ref.secret_id}
        if ref.version is not None:
            params["VersionId"] = ref.version
        if ref.stage is not None:
            params["VersionStage"] = ref.stage
        try:
            answer = await self._call("get_secret_value", ref, **params)
        except ProviderError as exc:
            return exc
        return self._value(answer, ref)

    async def _batch(self, chunk: Sequence[SecretRef]) -> dict[SecretRef, FetchResult]:
        """One BatchGetSecretValue (more if AWS pages the answer); per-id errors to their refs."""
        by_id = {ref.secret_id: ref for ref in chunk}
        entries: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        params: dict[str, Any] = {"SecretIdList": list(by_id)}
        try:
            while True:
                answer = await self._call("batch_get_secret_value", None, **params)
                entries.extend(answer.get("SecretValues", []))
                errors.extend(answer.get("Errors", []))
                if not answer.get("NextToken"):
                    break
                params["NextToken"] = answer["NextToken"]
        except _BatchDenied as exc:
            self._batch_known = True
            if not self._batch_denied:
                self._batch_denied = True
                log.warning(
                    "provider.batch_denied",
                    provider=self.name,
                    detail=f"{exc}; reading each secret with GetSecretValue from now on",
                )
            return await self._get_many(chunk)
        except ProviderError as exc:
            return {ref: exc.for_ref(ref) for ref in chunk}
        self._batch_known = True
        results: dict[SecretRef, FetchResult] = {}
        for entry in entries:
            ref = self._match(entry, by_id)
            if ref is not None and ref not in results:
                results[ref] = self._value(entry, ref)
        for error in errors:
            ref = by_id.get(str(error.get("SecretId", "")))
            if ref is not None and ref not in results:
                fake = bce.ClientError(
                    {"Error": {"Code": error.get("ErrorCode"), "Message": error.get("Message")}},
                    "BatchGetSecretValue",
                )
                results[ref] = _translate(fake, ref, self.endpoint)
        missing = [ref for ref in chunk if ref not in results]
        if missing:  # an answer that names neither value nor error: ask for each alone
            results.update(await self._get_many(missing))
        return results

    @staticmethod
    def _match(entry: Mapping[str, Any], by_id: Mapping[str, SecretRef]) -> SecretRef | None:
        """Which asked-for id an answer is for: its name, its ARN, or a partial ARN of it."""
        name, arn = str(entry.get("Name", "")), str(entry.get("ARN", ""))
        for key in (name, arn):
            if key in by_id:
                return by_id[key]
        for secret_id, ref in by_id.items():
            if secret_id.startswith("arn:") and arn.startswith(secret_id + "-"):
                return ref
        return None

    def _value(self, answer: Mapping[str, Any], ref: SecretRef) -> FetchResult:
        arn, name = answer.get("ARN"), answer.get("Name")
        if not isinstance(arn, str) or not isinstance(name, str):  # AWS always sends both
            return ProviderBug(ref, f"{self.endpoint} gave an answer that is not Secrets Manager's")
        if ref.secret_id == name:  # read by name: this ARN is that name's, in our account
            self._arn_names[arn] = name
        version = answer.get("VersionId")
        version = version if isinstance(version, str) else None
        if isinstance(answer.get("SecretString"), str):
            return SecretValue(answer["SecretString"], version)
        if isinstance(answer.get("SecretBinary"), bytes | bytearray):
            return SecretValue(bytes(answer["SecretBinary"]), version)
        return BadValue(ref, "the secret holds no value at this version (no SecretString/Binary)")

    async def _call(self, operation: str, ref: SecretRef | None, **params: Any) -> Any:
        """One request: a limits slot per attempt, transient errors retried (`self.request`)."""

        async def attempt() -> Any:
            try:
                try:
                    client = await self._connected()
                except ValueError as exc:  # botocore's word for a client it cannot build
                    raise ProviderBug(
                        ref, f"cannot create the AWS client ({_cut(str(exc))})"
                    ) from None
                method: Callable[..., Awaitable[Any]] = getattr(client, operation)
                return await method(**params)
            except bce.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if operation == "batch_get_secret_value" and code == "AccessDeniedException":
                    raise _BatchDenied(_cut(str(exc.response["Error"].get("Message")))) from None
                raise _translate(exc, ref, self.endpoint) from None
            except (bce.BotoCoreError, ResponseParserError, OSError) as exc:
                raise _translate(exc, ref, self.endpoint) from None

        # the operation only: a secret's name may be computed from a value
        return await self.request(attempt, what=operation)

    # --- rotation checks -------------------------------------------------------------------------

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        current = [r for r in known if r.version is None and r.stage is None]
        staged = [r for r in known if r.stage is not None]
        results: dict[SecretRef, RefreshResult] = {
            ref: Unchanged() for ref in known if ref.version is not None and ref.stage is None
        }
        fetched, checked = await asyncio.gather(
            self._read(current), self._check_stages(staged, known)
        )
        for ref, found in fetched.items():
            if isinstance(found, SecretValue) and found.version is not None:
                same = found.version == known[ref].version
                results[ref] = Unchanged() if same else found
            else:
                results[ref] = found
        reread = []
        for ref, moved in checked.items():
            if moved is None:
                reread.append(ref)
            else:
                results[ref] = moved
        if reread:
            results.update(await self._get_many(reread))
        return results

    async def _check_stages(
        self, refs: Sequence[SecretRef], known: Mapping[SecretRef, SecretValue]
    ) -> dict[SecretRef, RefreshResult | None]:
        """One DescribeSecret per secret: Unchanged, an error, or None (the stage moved: read)."""
        by_secret: dict[str, list[SecretRef]] = {}
        for ref in refs:
            by_secret.setdefault(ref.secret_id, []).append(ref)
        answers = await asyncio.gather(*(self._describe(group[0]) for group in by_secret.values()))
        results: dict[SecretRef, RefreshResult | None] = {}
        for group, answer in zip(by_secret.values(), answers, strict=True):
            for ref in group:
                if isinstance(answer, ProviderError):
                    results[ref] = answer.for_ref(ref)
                    continue
                stages = answer.get("VersionIdsToStages") or {}
                holder = next((v for v, s in stages.items() if ref.stage in s), None)
                if ref.version is not None and holder is not None and holder != ref.version:
                    results[ref] = NotFound(ref, f"version {ref.version} is no longer {ref.stage}")
                elif holder is None:
                    results[ref] = NotFound(ref, f"no version of the secret is {ref.stage} now")
                elif holder == known[ref].version:  # the label did not move: no read
                    results[ref] = Unchanged(_timestamp(answer.get("NextRotationDate")))
                else:
                    results[ref] = None
        return results

    async def _describe(self, ref: SecretRef) -> Mapping[str, Any] | ProviderError:
        try:
            answer: Mapping[str, Any] = await self._call(
                "describe_secret", ref, SecretId=ref.secret_id
            )
        except ProviderError as exc:
            return exc
        return answer

    # --- test-connection -------------------------------------------------------------------------

    async def test_connection(self) -> None:
        """A GetSecretValue of a name that cannot exist: needs no permission to prove the point.

        NotFound or AccessDenied *on the secret* both mean AWS accepted the
        credentials and the signature; rejected credentials, an unreachable
        endpoint or a TLS failure raise.
        """
        probe = SecretRef(self.name, f"smagent-test-connection-{uuid.uuid4().hex}")
        try:
            await self._call("get_secret_value", probe, SecretId=probe.secret_id)
        except NotFound:
            return
        except AccessDenied as exc:
            if exc.detail.startswith(("AccessDeniedException", "AccessDenied:")):
                return
            raise AccessDenied(None, exc.detail) from None

    def __repr__(self) -> str:
        return (
            f"AwsProvider(name={self.name!r}, region={self.region!r}, "
            f"endpoint_url={self.config.endpoint_url!r}, profile={self.config.profile!r})"
        )
