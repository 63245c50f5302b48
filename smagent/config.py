"""The configuration file: schema, loading, strict validation, durations.

Validation is strict because a typo in a secrets agent fails silently in the
worst way (a `rate_limt` that is ignored, a `mode: 0640` read as decimal).
Every problem becomes a `ConfigIssue` naming the file, the key path and what
was expected; `load_config` collects all of them before raising, so a user
fixes a config in one round, and nothing is written when any is found. That
includes what only this host can tell: a template's owner and group names are
looked up here (numeric ids are taken as they are).

The schema is msgspec Structs (fast to import and to validate, which matters
for `render --once` start-up). msgspec reports dict keys as `[...]`, so every
user-named mapping (providers, namespaces) is validated entry by entry here to
keep the key path exact. Relative paths are made absolute against the config
file's folder in one place (`_absolute`), after validation.

Nothing a user can write may get past `load_config` and crash a later step:
the file is read like every other input (`read_regular`: never blocks on a
FIFO, capped in size), the YAML is bounded (`config_yaml`), every string
that becomes a name, path or argument is refused when empty or holding a NUL
byte, numbers and durations have ranges, and paths are checked against what
this host can open (too long, under an unreachable folder, a FIFO where a
template should be). Files that hold or steer secrets are checked for modes
that let others read or change them: a warning, as ssh gives.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import stat
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from smagent import config_yaml
from smagent.exposure import warn_if_exposed
from smagent.references import Namespace
from smagent.regular_file import NotRegularFile, read_regular
from smagent.writer import UnknownOwnerError, resolve_group, resolve_owner

CONFIG_ENV = "SMAGENT_CONFIG"
DEFAULT_PATHS = (Path("smagent.yaml"), Path("/etc/smagent/smagent.yaml"))

MAX_CONFIG_BYTES = 1 << 20
"""A hand-written config is a few KiB; 1 MiB of YAML already takes seconds to parse."""
MAX_ID = 2**32 - 2
"""The largest uid/gid: ids are 32 bits and 2**32 - 1 means "no change" to chown."""
MAX_CONCURRENCY = 1000
_NAME_MAX = 255
_PATH_MAX = 4095


# --- strings that must hold something usable ---------------------------------------------------

Text = Annotated[str, msgspec.Meta(pattern=r"^(?!\s*$)[^\x00-\x1f\x7f]*$")]
"""A name, id, address or path: not blank, no NUL byte (the OS would cut a path or an
argument there), no other control character (a line break in a name or path forges lines in
`check` output and logs). Lone surrogates never get this far (`config_yaml` refuses them)."""
Arg = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$")]
"""A command argument: may be empty (`--password ""`), never holds a NUL byte."""


# --- value types with their own parsing ------------------------------------------------------


class Duration(float):
    """Seconds, written `500ms`, `30s`, `5m`, `1h` or combined (`1h30m`) in the file.

    From 1ms to 365d (or 0): `99999999999h` is a typo, not a plan, and a value
    below a millisecond would act as zero where zero is refused.
    """

    MAX: ClassVar[float] = 365 * 86400.0
    _PART: ClassVar[re.Pattern[str]] = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
    _UNITS: ClassVar[dict[str, float]] = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

    @classmethod
    def parse(cls, value: object) -> Duration:
        if value == 0 and isinstance(value, int) and not isinstance(value, bool):
            return cls(0)  # an unquoted `0` is a YAML int; zero needs no unit
        if isinstance(value, str):
            text = value.strip()
            if text == "0":
                return cls(0)
            pos, total = 0, 0.0
            for match in cls._PART.finditer(text):
                if match.start() != pos:
                    break
                total += float(match[1]) * cls._UNITS[match[2]]
                pos = match.end()
            else:
                if pos == len(text) and pos > 0:
                    return cls._bounded(total, value)
        raise ValueError(
            f"expected a duration such as 500ms, 30s, 5m or 1h, got {_describe(value)}"
        )

    @classmethod
    def _bounded(cls, seconds: float, written: str) -> Duration:
        if seconds > cls.MAX:  # also inf, from a number with hundreds of digits
            raise ValueError(f"expected a duration of at most 365d, got {_describe(written)}")
        if 0 < seconds < 0.001:
            raise ValueError(
                f"expected a duration of at least 1ms (or 0), got {_describe(written)}"
            )
        return cls(seconds)

    def __str__(self) -> str:
        seconds = float(self)
        if seconds and seconds < 1:
            return f"{seconds * 1000:g}ms"
        return f"{seconds:g}s"


class FileMode(int):
    """Permission bits, written as a quoted octal string (`"0640"`).

    An unquoted `0640` is YAML 1.1 octal and `640` is decimal; accepting ints
    would turn one of them into a wrong mode silently, so ints are refused.
    """

    @classmethod
    def parse(cls, value: object) -> FileMode:
        if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value.strip()):
            return cls(int(value.strip(), 8))
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                'write the mode as a quoted octal string such as "0640" (got an unquoted number: '
                "YAML reads 0640 as octal and 640 as decimal)"
            )
        raise ValueError(f'expected a quoted octal mode such as "0640", got {_describe(value)}')

    def __str__(self) -> str:
        return f"{int(self):04o}"


class SignalName(str):
    """A signal name such as `HUP` or `SIGHUP`, stored without the `SIG` prefix."""

    @classmethod
    def parse(cls, value: object) -> SignalName:
        if isinstance(value, str):
            name = value.strip().upper().removeprefix("SIG")
            if name and f"SIG{name}" in signal.Signals.__members__:
                return cls(name)
        raise ValueError(
            f"expected a signal name such as HUP, USR1 or TERM, got {_describe(value)}"
        )

    @property
    def number(self) -> signal.Signals:
        return signal.Signals[f"SIG{self}"]


_CUSTOM = {Duration: Duration.parse, FileMode: FileMode.parse, SignalName: SignalName.parse}


def _dec_hook(typ: type, value: object) -> object:
    parse = _CUSTOM.get(typ)
    if parse is None:
        raise NotImplementedError(typ)
    return parse(value)


# --- schema ------------------------------------------------------------------------------------


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class _Tagged(_Strict, tag_field="type", frozen=True, kw_only=True):
    pass


class _ProviderBase(_Tagged, frozen=True, kw_only=True):
    rate_limit: float | None = 20.0
    """Requests per second shared by everything using this provider; null = unlimited."""
    max_concurrency: int = 10


AWS_RATE_LIMIT = 50.0
"""The `aws` default: half of BatchGetSecretValue's quota (100 a second per account and region,
not adjustable; GetSecretValue allows 10,000, DescribeSecret 40,000). Every request of the
provider counts against it, so one host alone is never throttled by its own reads, and another
host or tool of the account keeps the other half; 50 batch calls a second read 1,000 secrets."""
AWS_MAX_CONCURRENCY = 25
"""The `aws` default: a pass of up to 500 secrets (25 BatchGetSecretValue calls of 20) goes
out at once instead of in three waves of 10 (botocore's own pool size); half a second of
`AWS_RATE_LIMIT`. Each is one pooled HTTPS connection to Secrets Manager."""


class AwsProviderConfig(_ProviderBase, tag="aws", frozen=True, kw_only=True):
    rate_limit: float | None = AWS_RATE_LIMIT
    max_concurrency: int = AWS_MAX_CONCURRENCY
    region: Text | None = None
    endpoint_url: Text | None = None
    profile: Text | None = None


class AzureProviderConfig(_ProviderBase, tag="azure", frozen=True, kw_only=True):
    vault_url: Text
    credential: Literal["default", "managed_identity", "client_secret"] = "default"
    tenant_id: Text | None = None
    client_id: Text | None = None
    """client_secret: the app registration; managed_identity/default: a user-assigned identity."""
    client_secret_file: Text | None = None
    authority_host: Text | None = None
    """The Entra ID host tokens come from (a sovereign cloud, Azure Stack, a test endpoint)."""
    ca_cert: Text | None = None
    """A PEM bundle trusted instead of the system's CAs, for the vault and the token endpoint."""
    verify_challenge_resource: bool = True
    """False only for a vault not under *.vault.azure.net (a private endpoint's own name, a test
    vault): the SDK otherwise refuses a challenge whose resource does not match the URL."""


class VaultApproleAuth(_Strict, tag_field="method", tag="approle", frozen=True, kw_only=True):
    role_id: Text | None = None
    role_id_file: Text | None = None
    secret_id_file: Text | None = None
    mount: Text = "approle"


class VaultTokenAuth(_Strict, tag_field="method", tag="token", frozen=True, kw_only=True):
    token_file: Text | None = None


class VaultProviderConfig(_ProviderBase, tag="vault", frozen=True, kw_only=True):
    address: Text
    auth: VaultApproleAuth | VaultTokenAuth
    namespace: Text | None = None
    ca_cert: Text | None = None
    revoke_replaced_after: Duration | None = Duration(30)
    """A lease replaced by new credentials is revoked this long after every file that used it
    was written with the new ones and their actions ran (the grace covers a client that read
    the old file just before); null: never revoked, it ends at its own expiry."""


class FileProviderConfig(_ProviderBase, tag="file", frozen=True, kw_only=True):
    path: Text


class EnvProviderConfig(_ProviderBase, tag="env", frozen=True, kw_only=True):
    pass


class ArcionProviderConfig(_Tagged, tag="arcion", frozen=True, kw_only=True):
    """Arcion Replicant's secret-manager file: expanded by `config_arcion` into aws/azure
    providers and namespaces at load time; never itself a provider instance."""

    rate_limit: float | msgspec.UnsetType | None = msgspec.UNSET
    """Unset: each provider the file expands into has its own type's default."""
    max_concurrency: int | msgspec.UnsetType = msgspec.UNSET
    path: Text


ProviderConfig = (
    AwsProviderConfig
    | AzureProviderConfig
    | VaultProviderConfig
    | FileProviderConfig
    | EnvProviderConfig
    | ArcionProviderConfig
)
PROVIDER_TYPES = ("aws", "azure", "vault", "file", "env", "arcion")
SECRET_MANAGER_FLAG = "arcion-sm"  # noqa: S105 - a provider name
"""The name of the provider that `--use-sm-provider`/`--secret-manager` add."""


class SecretManagerFlags(msgspec.Struct, frozen=True):
    """Replicant's own flags, as `render` and `check` take them."""

    use_sm_provider: str | None = None
    """AWS, AZURE or NONE."""
    secret_manager: str | None = None
    """The secret-manager file, relative to the current folder."""


class NamespaceConfig(_Strict, frozen=True, kw_only=True):
    provider: Text
    secret: Text | None = None
    version: Text | int | None = None
    stage: Text | None = None
    refresh: Duration | None = None


class WaitConfig(_Strict, frozen=True, kw_only=True):
    min: Duration = Duration(0)
    max: Duration = Duration(0)


class Defaults(_Strict, frozen=True, kw_only=True):
    refresh: Duration = Duration(300)
    wait: WaitConfig = WaitConfig()
    mode: FileMode = FileMode(0o600)
    fetch_timeout: Duration = Duration(30)
    """How long one pass waits for all its secrets before naming the late ones failed."""


class SignalPidfileAction(_Strict, frozen=True, kw_only=True):
    signal: SignalName
    pidfile: Text


class SignalUnitAction(_Strict, frozen=True, kw_only=True):
    signal: SignalName
    systemd_unit: Text


class CommandAction(_Strict, frozen=True, kw_only=True):
    command: list[Arg]
    timeout: Duration = Duration(30)


Action = SignalPidfileAction | SignalUnitAction | CommandAction


class TemplateConfig(_Strict, frozen=True, kw_only=True):
    destination: Text | None = None
    """Required; checked in `_Builder.template` so a bad one does not hide the other problems."""
    source: Text | None = None
    contents: str | None = None
    name: Text | None = None
    mode: FileMode | None = None
    owner: Text | int | None = None
    group: Text | int | None = None
    on_change: list[dict[str, Any]] = []
    """Checked one by one in `_Builder.actions`: the three action shapes carry no tag."""


# --- the loaded, validated result ----------------------------------------------------------------


class TemplateSpec(msgspec.Struct, frozen=True):
    """A template as the pipeline uses it: absolute paths, defaults applied."""

    name: str
    destination: Path
    mode: int
    source: Path | None = None
    contents: str | None = None
    owner: str | int | None = None
    group: str | int | None = None
    on_change: tuple[Action, ...] = ()


class Config(msgspec.Struct, frozen=True):
    path: Path
    providers: Mapping[str, ProviderConfig]
    namespaces: Mapping[str, Namespace]
    namespace_refresh: Mapping[str, Duration]
    defaults: Defaults
    templates: tuple[TemplateSpec, ...]
    groups: Mapping[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    """An arcion provider's name -> the providers it became (for `test-connection NAME`)."""
    state_dir: Path | None = None
    """`state_dir` as configured (absolute); None: chosen at run time (see state.py)."""
    metrics_file: Path | None = None
    """A Prometheus textfile-collector file the agent rewrites (atomically) after each pass."""

    @property
    def folder(self) -> Path:
        return self.path.parent

    def select(self, names: list[str]) -> tuple[TemplateSpec, ...]:
        """Templates matching `--template` names (name, source or destination as written)."""
        if not names:
            return self.templates
        chosen: list[TemplateSpec] = []
        unknown: list[str] = []
        for wanted in names:
            found = [
                t
                for t in self.templates
                if {wanted, os.path.normpath(wanted)} & _template_aliases(t, self.folder)
            ]
            if not found:
                unknown.append(wanted)
            chosen.extend(t for t in found if t not in chosen)
        if unknown:
            known = ", ".join(t.name for t in self.templates) or "none"
            raise ConfigError(
                [
                    ConfigIssue(
                        self.path, "templates", f"no template named {n!r} (templates: {known})"
                    )
                    for n in unknown
                ]
            )
        return tuple(chosen)


def _template_aliases(template: TemplateSpec, folder: Path) -> set[str]:
    """A template answers to its name and to its source or destination path, written
    absolute, relative to the config folder, or relative to the current folder."""
    aliases = {template.name}
    for path in (template.source, template.destination):
        if path is None:
            continue
        aliases.add(str(path))
        for base in (folder, Path.cwd()):
            aliases.add(os.path.relpath(path, base))
    return aliases


# --- errors ------------------------------------------------------------------------------------


class ConfigIssue(msgspec.Struct, frozen=True):
    file: Path | str
    key: str
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else f"{self.file}"
        return f"{where}: {self.problem}"


class ConfigError(Exception):
    """One or more problems in the config; nothing may be written when raised."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


# --- loading -------------------------------------------------------------------------------------


def find_config_path(explicit: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """`--config`, else $SMAGENT_CONFIG, else ./smagent.yaml, else /etc/smagent/smagent.yaml."""
    if explicit == "":  # `--config "$UNSET_VAR"` must not fall back to another file
        raise ConfigError([ConfigIssue("--config", "", "expected a file path, got ''")])
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    for candidate in DEFAULT_PATHS:
        if candidate.is_file():
            return candidate
    return DEFAULT_PATHS[-1]


def load_config(path: Path, flags: SecretManagerFlags | None = None) -> Config:
    """Read, validate and resolve a config file, or raise ConfigError listing every problem.

    `flags`: Replicant's `--use-sm-provider` / `--secret-manager`, which add an arcion
    provider named `arcion-sm` (see `config_arcion`)."""
    path = Path(os.path.abspath(path))
    text, info = _read_config(path)
    warn_if_exposed(path, info, "config file", holds_secrets=False)
    raw = _parse_yaml(path, text)
    return _Builder(path, raw, flags).build()


def configured_state_dir(path: Path) -> Path | None:
    """The `state_dir` of a config that fails validation, if that one key still reads.

    `smagent status` must find the running agent's state even when the config on disk was
    edited into something invalid: the agent rejected that edit and kept its last good
    config, and the operator asking "is it fine?" needs both facts, not only the error.
    None when the key is absent or unreadable (the caller then uses the default folder)."""
    try:
        raw = _parse_yaml(path, _read_config(Path(os.path.abspath(path)))[0])
    except ConfigError:
        return None
    if not isinstance(raw, dict):
        return None
    builder = _Builder(Path(os.path.abspath(path)), raw)
    state_dir = builder.agent_paths()[0]
    return None if builder.issues else state_dir


def _read_config(path: Path) -> tuple[str, os.stat_result]:
    """The text of the config file: a regular file of at most MAX_CONFIG_BYTES, UTF-8."""

    def fail(problem: str) -> ConfigError:
        return ConfigError([ConfigIssue(path, "", problem)])

    try:
        data, info = read_regular(path, MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise fail("config file not found") from None
    except OSError as exc:
        kind = _special_kind(path)
        if isinstance(exc, NotRegularFile) or kind is not None:
            raise fail(f"the config must be a regular file, not {kind or 'this'}") from None
        raise fail(f"cannot read config file: {_reason(exc)}") from None
    except ValueError:  # only a NUL byte in a path passed by a program, not from argv
        raise fail("cannot read config file: the path holds a NUL byte") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise fail(f"config file is larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise fail(f"not UTF-8 text (line {line})") from None
    return text, info  # a leading BOM is skipped by the YAML scanner


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        data = config_yaml.load(text)
    except config_yaml.YamlProblem as exc:
        where = f"line {exc.line}, column {exc.column}" if exc.line is not None else ""
        raise ConfigError([ConfigIssue(path, where, f"invalid YAML: {exc.problem}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue(path, "", f"expected a mapping at the top, got {_describe(data)}")]
        )
    return data


_TOP_KEYS = ("providers", "namespaces", "defaults", "templates", "state_dir", "metrics_file")
_ZERO_DURATION = "expected a duration above 0"
_MAX_VERSION = 2**63 - 1
_MAX_RETRIES = 32
"""Problems reported per config item (a provider, a template) before moving on."""
_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}
_MSGSPEC_ERROR = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


class _Builder:
    """Validates one raw config, collecting issues instead of stopping at the first."""

    def __init__(
        self, path: Path, raw: dict[str, Any], flags: SecretManagerFlags | None = None
    ) -> None:
        self.flags = flags
        self.arcion: dict[str, tuple[ArcionProviderConfig, str | None]] = {}
        """Arcion providers (expanded in `arcion_providers`) and the type the flags ask for."""
        self.arcion_files: list[tuple[str, str]] = []
        self.default_chain: str | None = None
        """`--use-sm-provider AWS` with no file: this provider reads any undeclared namespace."""
        self.extra_providers: dict[str, ProviderConfig] = {}
        self.path = path
        self.folder = path.parent
        self.raw = raw
        self.issues: list[ConfigIssue] = []
        self.dropped: set[str] = set()
        """Key paths `convert` took out after reporting them: later checks do not miss them."""
        self.declared_providers: set[object] = set()
        """Every provider name in the file, valid or not (an invalid one is reported once)."""

    def build(self) -> Config:
        for key in self.raw:
            if key not in _TOP_KEYS and not key.startswith("x-"):  # x-NAME: a place for anchors
                self.issue(key, f"unknown key (allowed: {', '.join(_TOP_KEYS)})")
        providers = self.providers()
        namespaces, refresh = self.namespaces(providers)
        groups = self.arcion_providers(providers, namespaces)
        providers.update(self.extra_providers)
        resolved: Mapping[str, Namespace] = namespaces
        if self.default_chain is not None:
            from smagent.config_arcion import DefaultChainNamespaces

            resolved = DefaultChainNamespaces(namespaces, self.default_chain)
        defaults = self.defaults()
        templates = self.templates(defaults, providers)
        state_dir, metrics_file = self.agent_paths()
        if self.issues:
            raise ConfigError(self.issues)
        assert defaults is not None
        for role, path in _secret_files(providers):
            _warn_if_file_exposed(Path(path), role)
        return Config(
            self.path,
            providers,
            resolved,
            refresh,
            defaults,
            templates,
            groups,
            state_dir,
            metrics_file,
        )

    # -- sections --

    def providers(self) -> dict[str, ProviderConfig]:
        out: dict[str, ProviderConfig] = {}
        for name, raw in self.mapping("providers").items():
            self.declared_providers.add(name)
            where = f"providers.{name}"
            if not self.check_name(name, where):
                continue
            if isinstance(raw, dict) and raw.get("type") not in PROVIDER_TYPES:
                if "type" not in raw:
                    self.issue(
                        f"{where}.type", f"required key is missing ({'|'.join(PROVIDER_TYPES)})"
                    )
                else:
                    self.issue(
                        f"{where}.type",
                        f"expected one of {', '.join(PROVIDER_TYPES)}, "
                        f"got {_describe(raw['type'])}",
                    )
                continue
            provider = self.convert(raw, ProviderConfig, where)
            if provider is None:
                continue
            rate = provider.rate_limit
            if isinstance(rate, float | int) and not (math.isfinite(rate) and rate > 0):
                self.issue(
                    f"{where}.rate_limit", "expected a number above 0 (or null for no limit)"
                )
            concurrency = provider.max_concurrency
            if isinstance(concurrency, int) and not 1 <= concurrency <= MAX_CONCURRENCY:
                self.issue(
                    f"{where}.max_concurrency",
                    f"expected a whole number from 1 to {MAX_CONCURRENCY}",
                )
            self.check_provider(provider, where)
            provider = self.absolute_paths(provider, where)
            if isinstance(provider, ArcionProviderConfig):
                self.arcion[name] = (provider, None)
            else:
                out[name] = provider
        self.secret_manager_flags(out)
        return out

    def secret_manager_flags(self, providers: Mapping[str, ProviderConfig]) -> None:
        """Replicant's flags as one more arcion provider, `arcion-sm` (NONE: none)."""
        flags = self.flags
        if flags is None or (flags.use_sm_provider is None and flags.secret_manager is None):
            return
        kind = (flags.use_sm_provider or "").upper() or None
        if kind == "NONE":
            if flags.secret_manager is not None:
                self.issues.append(
                    ConfigIssue(
                        "--secret-manager",
                        "",
                        "--use-sm-provider NONE uses no secret manager; drop --secret-manager "
                        "or say AWS or AZURE",
                    )
                )
            return
        name = SECRET_MANAGER_FLAG
        if flags.secret_manager is None:
            if kind != "AWS":
                self.issues.append(
                    ConfigIssue(
                        "--use-sm-provider",
                        "",
                        f"{kind or 'a secret manager'} needs --secret-manager FILE "
                        "(only AWS has a file-less mode: the default credential chain)",
                    )
                )
                return
            if name in providers:
                self.issue(
                    f"providers.{name}",
                    "this name is taken by --use-sm-provider; rename the provider",
                )
                return
            from smagent.config_arcion import ArcionAwsProviderConfig

            self.default_chain = name
            self.extra_providers[name] = ArcionAwsProviderConfig(origin="--use-sm-provider AWS")
            return
        name = SECRET_MANAGER_FLAG
        if name in providers or name in self.arcion:
            self.issue(
                f"providers.{name}",
                "this name is taken by --use-sm-provider/--secret-manager; rename the provider",
            )
            return
        path = os.path.normpath(os.path.abspath(os.path.expanduser(flags.secret_manager)))
        self.arcion[name] = (ArcionProviderConfig(path=path), kind)

    def arcion_providers(
        self, providers: dict[str, ProviderConfig], namespaces: dict[str, Namespace]
    ) -> dict[str, tuple[str, ...]]:
        """Expand each arcion provider into aws/azure providers and namespaces (in place).

        A namespace of an Arcion file that the config (or another Arcion file) also
        declares is an error naming both: which one a template meant cannot be guessed.
        """
        if not self.arcion:
            return {}
        from smagent import config_arcion

        groups: dict[str, tuple[str, ...]] = {}
        declared = {ns: f"{self.path}: namespaces.{ns}" for ns in namespaces}
        for name, (arcion, flag_type) in self.arcion.items():
            where = f"providers.{name}" if flag_type is None else "--secret-manager"
            path = Path(arcion.path)
            self.arcion_files.append((f"the Arcion secret-manager file of {where}", str(path)))
            try:
                text, info = _read_config(path)
                raw = _parse_yaml(path, text)
            except ConfigError as exc:
                self.issues.extend(exc.issues)
                continue
            sub = _Builder(path, raw)
            limits: dict[str, Any] = {}  # unset: each provider's own type's default
            if arcion.rate_limit is not msgspec.UNSET:
                limits["rate_limit"] = arcion.rate_limit
            if arcion.max_concurrency is not msgspec.UNSET:
                limits["max_concurrency"] = arcion.max_concurrency
            found = config_arcion.expand(sub, name, path, raw, limits, flag_type)
            for issue in sub.issues:
                key = issue.key.lstrip(".")
                problem = config_arcion.without_credentials(issue.problem, key)
                self.issues.append(ConfigIssue(issue.file, key, problem))
            warn_if_exposed(
                path, info, "Arcion secret-manager file", holds_secrets=found.holds_credentials
            )
            for ns_name, namespace in found.namespaces.items():
                if ns_name in declared:
                    self.issues.append(
                        ConfigIssue(
                            path,
                            f"namespaces.{ns_name}",
                            f"namespace {ns_name!r} is also declared in {declared[ns_name]}; "
                            "rename or remove one of them",
                        )
                    )
                    continue
                namespaces[ns_name] = namespace
                declared[ns_name] = f"{path}: namespaces.{ns_name} ({where})"
            providers.update(found.providers)
            groups[name] = tuple(found.providers)
        return groups

    def check_provider(self, provider: ProviderConfig, where: str) -> None:
        """What a provider's fields must say together, and URLs a client can use."""
        for key, schemes in _URL_FIELDS.items():
            value = getattr(provider, key, None)
            if value is not None and (problem := _url_problem(value, schemes)):
                self.issue(f"{where}.{key}", problem)
        if isinstance(provider, AzureProviderConfig):
            if provider.credential == "client_secret":
                for key in ("tenant_id", "client_id", "client_secret_file"):
                    if getattr(provider, key) is None:
                        self.issue(f"{where}.{key}", "required with credential: client_secret")
            else:
                for key in ("tenant_id", "client_secret_file"):
                    if getattr(provider, key) is not None:
                        self.issue(
                            f"{where}.{key}",
                            "only used with credential: client_secret "
                            f"(this one is {provider.credential})",
                        )
        auth = getattr(provider, "auth", None)
        if isinstance(auth, VaultApproleAuth) and (auth.role_id is None) == (
            auth.role_id_file is None
        ):
            self.issue(f"{where}.auth", "give exactly one of `role_id` or `role_id_file`")

    def namespaces(
        self, providers: Mapping[str, ProviderConfig]
    ) -> tuple[dict[str, Namespace], dict[str, Duration]]:
        out: dict[str, Namespace] = {}
        refresh: dict[str, Duration] = {}
        for name, raw in self.mapping("namespaces").items():
            where = f"namespaces.{name}"
            if not self.check_name(name, where):
                continue
            ns = self.convert(raw, NamespaceConfig, where)
            if ns is None:
                continue
            if isinstance(ns.version, int) and not 0 <= ns.version <= _MAX_VERSION:
                self.issue(f"{where}.version", "expected a version id or a number from 0 to 2^63-1")
                continue
            if ns.refresh is not None and ns.refresh <= 0:  # the agent would re-fetch non-stop
                self.issue(f"{where}.refresh", _ZERO_DURATION)
            if ns.provider in self.arcion:
                self.issue(
                    f"{where}.provider",
                    f"{ns.provider!r} is an arcion provider: its file's namespaces are "
                    "namespaces already; use them by name",
                )
                continue
            if ns.provider not in providers:
                if ns.provider not in self.declared_providers:
                    known = ", ".join(sorted(map(str, self.declared_providers))) or "none declared"
                    self.issue(
                        f"{where}.provider",
                        f"unknown provider {ns.provider!r} (providers: {known})",
                    )
                continue
            version = None if ns.version is None else str(ns.version)
            out[name] = Namespace(name, ns.provider, ns.secret, version, ns.stage)
            if ns.refresh is not None:
                refresh[name] = ns.refresh
        return out, refresh

    def agent_paths(self) -> tuple[Path | None, Path | None]:
        """`state_dir` and `metrics_file`, absolute (relative ones: the config folder)."""
        found: list[Path | None] = []
        for key in ("state_dir", "metrics_file"):
            raw = self.raw.get(key)
            text = None if raw is None else self.convert(raw, Text, key)
            found.append(None if text is None else self.absolute(text, key))
        return found[0], found[1]

    def defaults(self) -> Defaults | None:
        defaults: Defaults | None = self.convert(self.raw.get("defaults"), Defaults, "defaults")
        if defaults is None:
            return None
        # zero: every fetch would time out; the agent would re-fetch without a pause
        for key in ("fetch_timeout", "refresh"):
            if getattr(defaults, key) <= 0:
                self.issue(f"defaults.{key}", _ZERO_DURATION)
        wait = defaults.wait
        if wait.max > 0 and wait.min > wait.max:
            self.issue("defaults.wait", f"min ({wait.min}) is above max ({wait.max})")
        return defaults

    def templates(
        self, defaults: Defaults | None, providers: Mapping[str, ProviderConfig]
    ) -> tuple[TemplateSpec, ...]:
        raw_list = self.raw.get("templates")
        if raw_list is None:
            return ()
        if not isinstance(raw_list, list):
            self.issue("templates", f"expected a list, got {_describe(raw_list)}")
            return ()
        out: list[tuple[str, TemplateSpec]] = []
        names: dict[str, str] = {}
        for index, raw in enumerate(raw_list):
            where = f"templates[{index}]"
            spec = self.convert(raw, TemplateConfig, where)
            if spec is None:
                continue
            template = self.template(spec, where, defaults)
            if template is None:
                continue
            if template.name in names:
                self.issue(
                    f"{where}.name",
                    f"template name {template.name!r} is also the name of {names[template.name]}; "
                    "set `name:` on one of them",
                )
            names[template.name] = where
            out.append((where, template))
        self.check_destinations(out, providers)
        return tuple(template for _, template in out)

    def check_destinations(
        self, templates: list[tuple[str, TemplateSpec]], providers: Mapping[str, ProviderConfig]
    ) -> None:
        """No two templates write one file, and none writes over a file smagent reads.

        Paths are compared with their folders' symlinks resolved: `/var/run/x`
        and `/run/x` are one file. A destination that is itself a symlink is
        replaced, not followed, so it is compared as the link.
        """
        taken: dict[str, str] = {}
        for spelling in _spellings(self.path):
            taken.setdefault(spelling, "the config file")
        for role, path in [*_read_files(providers), *self.arcion_files]:
            for spelling in _spellings(Path(path)):
                taken.setdefault(spelling, role)
        for where, template in templates:
            if template.source is not None:
                for spelling in _spellings(template.source):
                    taken.setdefault(spelling, f"the source of {where}")
            for index, action in enumerate(template.on_change):
                if isinstance(action, SignalPidfileAction):
                    for spelling in _spellings(Path(action.pidfile)):
                        taken.setdefault(spelling, f"the pidfile of {where}.on_change[{index}]")
        writes: dict[str, str] = {}
        for where, template in templates:
            key = _destination_key(template.destination)
            if key in writes:
                self.issue(
                    f"{where}.destination",
                    f"{template.destination} is also the destination of {writes[key]}",
                )
            elif key in taken:
                self.issue(
                    f"{where}.destination",
                    f"{template.destination} is {taken[key]}; writing it would replace it",
                )
            writes.setdefault(key, where)

    def template(
        self, spec: TemplateConfig, where: str, defaults: Defaults | None
    ) -> TemplateSpec | None:
        self.check_ids(spec, where)
        ok = True
        source = None
        if {f"{where}.source", f"{where}.contents"} & self.dropped:
            ok = False  # already reported as invalid
        elif (spec.source is None) == (spec.contents is None):
            self.issue(
                where, "give exactly one of `source` (a template file) or `contents` (inline)"
            )
            ok = False
        elif spec.source is not None:
            source = self.absolute(spec.source, f"{where}.source")
            problem = source and _source_problem(source)
            if problem:
                self.issue(f"{where}.source", problem)
            ok = source is not None and not problem
        destination = problem = None
        if spec.destination is not None:
            destination = self.absolute(spec.destination, f"{where}.destination")
            problem = destination and _destination_problem(destination, spec.destination)
            if problem:
                self.issue(f"{where}.destination", problem)
        elif f"{where}.destination" not in self.dropped:
            self.issue(f"{where}.destination", "required key is missing")
        actions = self.actions(spec.on_change, f"{where}.on_change")
        if not ok or destination is None or problem:
            return None
        mode = (
            spec.mode if spec.mode is not None else (defaults.mode if defaults else FileMode(0o600))
        )
        if spec.name is not None:
            name = spec.name
        elif source is not None:
            name = source.name
        else:
            name = destination.name
        return TemplateSpec(
            name=name,
            destination=destination,
            mode=int(mode),
            source=source,
            contents=spec.contents,
            owner=spec.owner,
            group=spec.group,
            on_change=actions,
        )

    def actions(self, raw_actions: list[dict[str, Any]], where: str) -> tuple[Action, ...]:
        out: list[Action] = []
        for i, raw in enumerate(raw_actions):
            here = f"{where}[{i}]"
            typ: type[Action]
            if "command" in raw:
                typ = CommandAction
            elif "systemd_unit" in raw:
                typ = SignalUnitAction
            elif "pidfile" in raw:
                typ = SignalPidfileAction
            else:
                self.issue(
                    here,
                    "expected {signal: NAME, pidfile: PATH}, {signal: NAME, systemd_unit: UNIT} "
                    "or {command: [ARGV...], timeout: DURATION}",
                )
                continue
            action = self.convert(raw, typ, here)
            if action is not None and self.check_action(action, here):
                out.append(self.absolute_paths(action, here))
        return tuple(out)

    def check_action(self, action: Action, where: str) -> bool:
        """Whether a converted action is usable; each problem is reported."""
        if not isinstance(action, CommandAction):
            return True
        ok = True
        if not action.command:
            self.issue(f"{where}.command", "expected a non-empty list of arguments")
            ok = False
        elif not action.command[0].strip():
            self.issue(f"{where}.command[0]", "expected the program to run, got an empty string")
            ok = False
        if action.timeout <= 0:  # a command given no time at all always fails
            self.issue(f"{where}.timeout", _ZERO_DURATION)
            ok = False
        return ok

    def check_ids(self, spec: TemplateConfig, where: str) -> None:
        """An owner or group this host does not know is a config problem, found before any write."""
        for key, value, resolve in (
            ("owner", spec.owner, resolve_owner),
            ("group", spec.group, resolve_group),
        ):
            try:
                number = resolve(value)
            except UnknownOwnerError as exc:
                self.issue(f"{where}.{key}", str(exc))
                continue
            except ValueError:  # a digit string too long to be a number
                number = MAX_ID + 1
            if number is not None and number > MAX_ID:
                self.issue(f"{where}.{key}", f"{key} {_describe(value)}: ids go from 0 to {MAX_ID}")

    # -- helpers --

    def issue(self, key: str, problem: str) -> None:
        self.issues.append(ConfigIssue(self.path, key, problem))

    def check_name(self, name: object, where: str) -> bool:
        if isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
            return True
        self.issue(
            where, "names may hold letters, digits, '_' and '-' and start with a letter or '_'"
        )
        return False

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.issue(key, f"expected a mapping, got {_describe(value)}")
            return {}
        return value

    def convert(self, raw: object, typ: Any, where: str) -> Any:
        """msgspec conversion whose errors become ConfigIssues with full key paths.

        msgspec stops at the first error. So that a user sees every problem of
        an item at once, the key at fault is dropped and the conversion tried
        again. What converts without it is returned so that the later checks
        of the item still run; it never reaches a Config, as the issue already
        recorded makes `build` raise.
        """
        if raw is None:
            raw = {}
        for _ in range(_MAX_RETRIES):
            try:
                return msgspec.convert(raw, typ, dec_hook=_dec_hook)
            except msgspec.ValidationError as exc:
                issue, culprit = self.explain(exc, raw, typ, where)
                if issue.key in self.dropped:  # "missing": we took it out ourselves
                    return None
                self.issues.append(issue)
                key = None if culprit is None else _holding_key(culprit)
                smaller = None if key is None else _without(raw, key)
                if key is None or smaller is None:
                    return None
                raw = smaller
                self.dropped.add(where + key)
        return None

    def explain(
        self, exc: msgspec.ValidationError, raw: object, typ: Any, where: str
    ) -> tuple[ConfigIssue, str | None]:
        """The issue, and the sub-path of the key to drop to look past it (None: stop here)."""
        match = _MSGSPEC_ERROR.match(str(exc))
        assert match is not None
        message, subpath = match["msg"], match["path"] or ""
        key = where + subpath
        if found := re.fullmatch(r"Object contains unknown field `(.+)`", message):
            allowed = _allowed_keys(typ, raw, subpath)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            return (
                ConfigIssue(self.path, f"{key}.{found[1]}", f"unknown key{hint}"),
                f"{subpath}.{found[1]}",
            )
        if found := re.fullmatch(r"Object missing required field `(.+)`", message):
            return ConfigIssue(self.path, f"{key}.{found[1]}", "required key is missing"), None
        got = _value_at(raw, subpath)
        if found := re.fullmatch(r"Expected `(.+)`, got `(.+)`", message):
            wanted = " or ".join(_TYPE_WORDS.get(t.strip(), t.strip()) for t in found[1].split("|"))
            problem = f"expected {wanted}, got {_describe(got)}"
        elif message.startswith("Expected `str` matching regex"):
            problem = _text_problem(got)
        elif message == "Number out of range":
            problem = f"expected a number, got {_describe(got)} (out of range)"
        elif found := re.fullmatch(r"Invalid value (.+)", message):
            problem = f"invalid value {found[1]}"
        else:
            problem = message
        return ConfigIssue(self.path, key, problem), subpath

    def absolute(self, value: str, where: str) -> Path | None:
        """`value` against the config folder, or None (and an issue) when no file can have it."""
        path = Path(os.path.normpath(self.folder / os.path.expanduser(value)))
        problem = _path_problem(path)
        if problem is not None:
            self.issue(where, problem)
            return None
        return path

    def absolute_paths(self, struct: Any, where: str) -> Any:
        """Resolve every path-valued field of a struct against the config folder."""
        changes: dict[str, Any] = {}
        for field in _PATH_FIELDS:
            value = getattr(struct, field, None)
            if field in struct.__struct_fields__ and value is not None:
                path = self.absolute(value, f"{where}.{field}")
                changes[field] = value if path is None else str(path)
        if "auth" in struct.__struct_fields__:
            changes["auth"] = self.absolute_paths(struct.auth, f"{where}.auth")
        return msgspec.structs.replace(struct, **changes) if changes else struct


_PATH_FIELDS = (
    "path",
    "pidfile",
    "ca_cert",
    "token_file",
    "secret_id_file",
    "role_id_file",
    "client_secret_file",
)


def _holding_key(subpath: str) -> str | None:
    """The sub-path of the mapping key that holds `subpath` (None: the item itself).

    For `.on_change[0].command[1]` it is `.on_change[0].command`: dropping a
    list item would shift the indexes of the next errors.
    """
    parts = _PATH_PART.findall(subpath)
    names = [i for i, (name, _) in enumerate(parts) if name]
    if not names:
        return None
    return "".join(f".{name}" if name else f"[{index}]" for name, index in parts[: names[-1] + 1])


def _without(raw: object, subpath: str) -> object | None:
    """A copy of `raw` without the mapping key at `subpath` (None: there is no such key)."""
    return _drop(raw, _PATH_PART.findall(subpath))


_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _drop(node: object, parts: list[tuple[str, str]]) -> object | None:
    if not parts:
        return None
    (name, index), rest = parts[0], parts[1:]
    if isinstance(node, dict) and name in node:
        copy = dict(node)
        if not rest:
            del copy[name]
            return copy
        child = _drop(node[name], rest)
        if child is None:
            return None
        copy[name] = child
        return copy
    if isinstance(node, list) and index and int(index) < len(node):
        child = _drop(node[int(index)], rest)
        if child is None:
            return None
        items = list(node)
        items[int(index)] = child
        return items
    return None


def _allowed_keys(typ: Any, raw: object, subpath: str) -> list[str]:
    """The keys the struct at `subpath` accepts, for an 'unknown key' message."""
    node = raw
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", subpath):
        if index:
            typ = getattr(typ, "__args__", (None,))[0]
            node = _value_at(node, f"[{index}]")
            continue
        struct = _struct_for(typ, node)
        if struct is None:
            return []
        typ = {f.name: f.type for f in msgspec.structs.fields(struct)}.get(name)
        node = _value_at(node, f".{name}")
    struct = _struct_for(typ, node)
    if struct is None:
        return []
    config = struct.__struct_config__
    keys = [config.tag_field] if config.tag_field else []
    return sorted([*keys, *struct.__struct_encode_fields__])


def _struct_for(typ: Any, node: object) -> Any:
    """The Struct class `typ` means for this raw node (a tagged union picks by its tag)."""
    members = getattr(typ, "__args__", (typ,))
    structs = [m for m in members if isinstance(m, type) and issubclass(m, msgspec.Struct)]
    for struct in structs:
        config = struct.__struct_config__
        if config.tag_field is None or (
            isinstance(node, dict) and node.get(config.tag_field) == config.tag
        ):
            return struct
    return None


def _value_at(raw: object, subpath: str) -> object:
    node = raw
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", subpath):
        name, index = part
        try:
            node = node[int(index)] if index else node[name]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _describe(value: object) -> str:
    """A YAML value in the user's words: short text for a scalar, the shape of a container."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    return f"a {type(value).__name__}"


def _text_problem(value: object) -> str:
    """Why a string was refused where a name, path or argument is expected."""
    if isinstance(value, str):
        if "\x00" in value:
            return "a NUL byte (\\0) is not allowed here"
        if value.strip() and re.search(r"[\x01-\x1f\x7f]", value):
            shown = _describe(value)
            return f"a control character (a line break, a tab...) is not allowed here: {shown}"
        return f"expected a non-empty string, got {_describe(value)}"
    return f"expected a string, got {_describe(value)}"


def _path_problem(path: Path) -> str | None:
    """Why no file can have this absolute path on Linux, if so (checked before any write)."""
    size = len(os.fsencode(path))
    if size > _PATH_MAX:
        return f"the path is {size} bytes long; the limit is {_PATH_MAX}"
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > _NAME_MAX:
            return f"the name {_describe(part)} is {size} bytes long; the limit is {_NAME_MAX}"
    return None


def _source_problem(path: Path) -> str | None:
    """Why a template file cannot be read, if so: it is opened as the renderer will open it."""
    try:
        read_regular(path, 0)
    except FileNotFoundError:
        return f"template file not found: {path}"
    except OSError as exc:
        kind = _special_kind(path)
        if isinstance(exc, NotRegularFile) or kind is not None:
            return f"{path} is {kind or 'not a regular file'}; a template must be a regular file"
        return f"cannot read template file {path}: {_reason(exc)}"
    return None


def _destination_problem(path: Path, written: str) -> str | None:
    """Why a destination cannot be written, if this host can tell now.

    A missing file or folder is fine (the writer creates them); a symlink is
    fine (it is replaced, never followed); a FIFO or device is refused, since
    replacing `/dev/null` with a file is never what was meant.
    """
    if written.endswith("/"):
        return f"{path} is a folder; name the file to write"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot reach {path}: {_reason(exc)}"
    if stat.S_ISDIR(info.st_mode):
        return f"{path} is a folder; name the file to write"
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "a special file")
        return f"{path} is {kind}; smagent only replaces regular files"
    return None


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _special_kind(path: Path) -> str | None:
    """'a FIFO', 'a folder'... when `path` exists and is not a regular file; None otherwise."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "a special file")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EACCES:
        return "permission denied (a folder on the way is not searchable, or the file not readable)"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path that should be a folder is a file"
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _spellings(path: Path) -> set[str]:
    """The names by which writing a destination would replace `path`: as written
    (folders resolved) and, for a symlink, its target."""
    return {_destination_key(path), os.path.realpath(path)}


def _destination_key(path: Path) -> str:
    return os.path.join(os.path.realpath(path.parent), path.name)


def _read_files(providers: Mapping[str, ProviderConfig]) -> Iterator[tuple[str, str]]:
    """(role, path) of every file a provider reads: a destination must not replace one."""
    for name, provider in providers.items():
        auth = getattr(provider, "auth", None)
        for holder, prefix in ((provider, f"providers.{name}"), (auth, f"providers.{name}.auth")):
            for field in _PATH_FIELDS:
                value = getattr(holder, field, None)
                if isinstance(value, str):
                    yield f"the file of {prefix}.{field}", value


_URL_FIELDS = {
    "vault_url": ("https",),  # the Key Vault client refuses anything else
    "authority_host": ("https",),  # azure-identity refuses anything else
    "address": ("https", "http"),
    "endpoint_url": ("https", "http"),
}


def _url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    """Why `value` is not a URL with one of `schemes` and a host, if so."""
    wanted = " or ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return f"expected an {wanted} URL, got {_describe(value)}"
    if parts.scheme not in schemes or not parts.hostname:
        return f"expected an {wanted} URL with a host name, got {_describe(value)}"
    return None


_SECRET_FIELDS = ("path", "token_file", "secret_id_file", "client_secret_file")
"""Path fields whose file holds a secret or a credential (not a CA or a role id)."""


def _secret_files(providers: Mapping[str, ProviderConfig]) -> Iterator[tuple[str, str]]:
    for role, path in _read_files(providers):
        if role.rsplit(".", 1)[-1] in _SECRET_FIELDS:
            yield role.removeprefix("the file of "), path


def _warn_if_file_exposed(path: Path, role: str) -> None:
    """A missing or unreadable file is the provider's to report when it reads it."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return
    warn_if_exposed(path, info, role)
