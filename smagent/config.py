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
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec
import yaml

from smagent.references import Namespace
from smagent.writer import UnknownOwnerError, resolve_group, resolve_owner

CONFIG_ENV = "SMAGENT_CONFIG"
DEFAULT_PATHS = (Path("smagent.yaml"), Path("/etc/smagent/smagent.yaml"))


# --- value types with their own parsing ------------------------------------------------------


class Duration(float):
    """Seconds, written `500ms`, `30s`, `5m`, `1h` or combined (`1h30m`) in the file."""

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
                    return cls(total)
        raise ValueError(f"expected a duration such as 500ms, 30s, 5m or 1h, got {value!r}")

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
        raise ValueError(f'expected a quoted octal mode such as "0640", got {value!r}')

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
        raise ValueError(f"expected a signal name such as HUP, USR1 or TERM, got {value!r}")

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


class _ProviderBase(_Strict, tag_field="type", frozen=True, kw_only=True):
    rate_limit: float | None = 20.0
    """Requests per second shared by everything using this provider; null = unlimited."""
    max_concurrency: int = 10


class AwsProvider(_ProviderBase, tag="aws", frozen=True, kw_only=True):
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None


class AzureProvider(_ProviderBase, tag="azure", frozen=True, kw_only=True):
    vault_url: str
    credential: Literal["default", "managed_identity", "client_secret"] = "default"
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_file: str | None = None


class VaultApproleAuth(_Strict, tag_field="method", tag="approle", frozen=True, kw_only=True):
    role_id: str | None = None
    role_id_file: str | None = None
    secret_id_file: str | None = None
    mount: str = "approle"


class VaultTokenAuth(_Strict, tag_field="method", tag="token", frozen=True, kw_only=True):
    token_file: str | None = None


class VaultProvider(_ProviderBase, tag="vault", frozen=True, kw_only=True):
    address: str
    auth: VaultApproleAuth | VaultTokenAuth
    namespace: str | None = None
    ca_cert: str | None = None


class FileProvider(_ProviderBase, tag="file", frozen=True, kw_only=True):
    path: str


class EnvProvider(_ProviderBase, tag="env", frozen=True, kw_only=True):
    pass


ProviderConfig = AwsProvider | AzureProvider | VaultProvider | FileProvider | EnvProvider
PROVIDER_TYPES = ("aws", "azure", "vault", "file", "env")


class NamespaceConfig(_Strict, frozen=True, kw_only=True):
    provider: str
    secret: str | None = None
    version: str | int | None = None
    stage: str | None = None
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
    pidfile: str


class SignalUnitAction(_Strict, frozen=True, kw_only=True):
    signal: SignalName
    systemd_unit: str


class CommandAction(_Strict, frozen=True, kw_only=True):
    command: list[str]
    timeout: Duration = Duration(30)


Action = SignalPidfileAction | SignalUnitAction | CommandAction


class TemplateConfig(_Strict, frozen=True, kw_only=True):
    destination: str
    source: str | None = None
    contents: str | None = None
    name: str | None = None
    mode: FileMode | None = None
    owner: str | int | None = None
    group: str | int | None = None
    on_change: list[dict[str, Any]] = []
    """Checked one by one in `_Builder.actions`: the three action shapes carry no tag."""


# --- the loaded, validated result ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A template as the pipeline uses it: absolute paths, defaults applied."""

    name: str
    destination: Path
    mode: int
    source: Path | None = None
    contents: str | None = None
    owner: str | int | None = None
    group: str | int | None = None
    on_change: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    providers: Mapping[str, ProviderConfig]
    namespaces: Mapping[str, Namespace]
    namespace_refresh: Mapping[str, Duration]
    defaults: Defaults
    templates: tuple[Template, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def select(self, names: list[str]) -> tuple[Template, ...]:
        """Templates matching `--template` names (name, source or destination as written)."""
        if not names:
            return self.templates
        chosen: list[Template] = []
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


def _template_aliases(template: Template, folder: Path) -> set[str]:
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


@dataclass(frozen=True, slots=True)
class ConfigIssue:
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
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    for candidate in DEFAULT_PATHS:
        if candidate.is_file():
            return candidate
    return DEFAULT_PATHS[-1]


def load_config(path: Path) -> Config:
    """Read, validate and resolve a config file, or raise ConfigError listing every problem."""
    path = Path(os.path.abspath(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(path, "", "config file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([ConfigIssue(path, "", f"cannot read config file: {reason}")]) from None
    raw = _parse_yaml(path, text)
    return _Builder(path, raw).build()


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = 1
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([ConfigIssue(path, where, f"invalid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(path, "", f"invalid YAML: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue(path, "", f"expected a mapping at the top, got {_kind(data)}")]
        )
    return data


_TOP_KEYS = ("providers", "namespaces", "defaults", "templates")
_ZERO_DURATION = "expected a duration above 0"
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

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        self.folder = path.parent
        self.raw = raw
        self.issues: list[ConfigIssue] = []
        self.declared_providers: set[object] = set()
        """Every provider name in the file, valid or not (an invalid one is reported once)."""

    def build(self) -> Config:
        for key in self.raw:
            if key not in _TOP_KEYS:
                self.issue(str(key), f"unknown key (allowed: {', '.join(_TOP_KEYS)})")
        providers = self.providers()
        namespaces, refresh = self.namespaces(providers)
        defaults = self.convert(self.raw.get("defaults") or {}, Defaults, "defaults")
        if defaults is not None and defaults.fetch_timeout <= 0:  # every fetch would time out
            self.issue("defaults.fetch_timeout", _ZERO_DURATION)
        templates = self.templates(defaults)
        if self.issues:
            raise ConfigError(self.issues)
        assert defaults is not None
        return Config(self.path, providers, namespaces, refresh, defaults, templates)

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
                        f"expected one of {', '.join(PROVIDER_TYPES)}, got {raw['type']!r}",
                    )
                continue
            provider = self.convert(raw, ProviderConfig, where)
            if provider is None:
                continue
            if provider.rate_limit is not None and provider.rate_limit <= 0:
                self.issue(
                    f"{where}.rate_limit", "expected a number above 0 (or null for no limit)"
                )
            if provider.max_concurrency < 1:
                self.issue(f"{where}.max_concurrency", "expected a whole number of at least 1")
            out[name] = self.absolute_paths(provider)
        return out

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

    def templates(self, defaults: Defaults | None) -> tuple[Template, ...]:
        raw_list = self.raw.get("templates") or []
        if not isinstance(raw_list, list):
            self.issue("templates", f"expected a list, got {_kind(raw_list)}")
            return ()
        out: list[Template] = []
        names: dict[str, str] = {}
        destinations: dict[Path, str] = {}
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
            if template.destination in destinations:
                self.issue(
                    f"{where}.destination",
                    f"{template.destination} is also the destination of "
                    f"{destinations[template.destination]}",
                )
            destinations[template.destination] = where
            out.append(template)
        return tuple(out)

    def template(
        self, spec: TemplateConfig, where: str, defaults: Defaults | None
    ) -> Template | None:
        self.check_ids(spec, where)
        if (spec.source is None) == (spec.contents is None):
            self.issue(
                where, "give exactly one of `source` (a template file) or `contents` (inline)"
            )
            return None
        source = None
        if spec.source is not None:
            source = self.absolute(spec.source)
            if not source.is_file():
                self.issue(f"{where}.source", f"template file not found: {source}")
                return None
        destination = self.absolute(spec.destination)
        if spec.destination.endswith("/") or (destination.exists() and destination.is_dir()):
            self.issue(f"{where}.destination", f"{destination} is a folder; name the file to write")
            return None
        actions = self.actions(spec.on_change, f"{where}.on_change")
        mode = (
            spec.mode if spec.mode is not None else (defaults.mode if defaults else FileMode(0o600))
        )
        if spec.name is not None:
            name = spec.name
        elif source is not None:
            name = source.name
        else:
            name = destination.name
        return Template(
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
                out.append(self.absolute_paths(action))
        return tuple(out)

    def check_action(self, action: Action, where: str) -> bool:
        """Whether a converted action is usable; each problem is reported."""
        if not isinstance(action, CommandAction):
            return True
        ok = True
        if not action.command:
            self.issue(f"{where}.command", "expected a non-empty list of arguments")
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
                resolve(value)
            except UnknownOwnerError as exc:
                self.issue(f"{where}.{key}", str(exc))

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
            self.issue(key, f"expected a mapping, got {_kind(value)}")
            return {}
        return value

    def convert(self, raw: object, typ: Any, where: str) -> Any:
        """msgspec conversion whose errors become ConfigIssues with full key paths."""
        if raw is None:
            raw = {}
        try:
            return msgspec.convert(raw, typ, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            self.issues.append(self.explain(exc, raw, typ, where))
            return None

    def explain(
        self, exc: msgspec.ValidationError, raw: object, typ: Any, where: str
    ) -> ConfigIssue:
        match = _MSGSPEC_ERROR.match(str(exc))
        assert match is not None
        message, subpath = match["msg"], match["path"] or ""
        key = where + subpath
        if found := re.fullmatch(r"Object contains unknown field `(.+)`", message):
            allowed = _allowed_keys(typ, raw, subpath)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            return ConfigIssue(self.path, f"{key}.{found[1]}", f"unknown key{hint}")
        if found := re.fullmatch(r"Object missing required field `(.+)`", message):
            return ConfigIssue(self.path, f"{key}.{found[1]}", "required key is missing")
        if found := re.fullmatch(r"Expected `(.+)`, got `(.+)`", message):
            wanted = " or ".join(_TYPE_WORDS.get(t.strip(), t.strip()) for t in found[1].split("|"))
            got = _value_at(raw, subpath)
            return ConfigIssue(self.path, key, f"expected {wanted}, got {_describe(got)}")
        if found := re.fullmatch(r"Invalid value (.+)", message):
            return ConfigIssue(self.path, key, f"invalid value {found[1]}")
        return ConfigIssue(self.path, key, message)

    def absolute(self, value: str) -> Path:
        return Path(os.path.normpath(self.folder / os.path.expanduser(value)))

    def absolute_paths(self, struct: Any) -> Any:
        """Resolve every path-valued field of a struct against the config folder."""
        changes = {
            field: str(self.absolute(getattr(struct, field)))
            for field in _PATH_FIELDS
            if field in struct.__struct_fields__ and getattr(struct, field) is not None
        }
        if "auth" in struct.__struct_fields__:
            changes["auth"] = self.absolute_paths(struct.auth)
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
    return sorted([*keys, *struct.__struct_fields__])


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


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _describe(value)


def _describe(value: object) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return _kind(value)
