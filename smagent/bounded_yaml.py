"""YAML composed with bounded work: the layer under the config's and the secrets' readers.

PyYAML's composers trust the shape of their input. The C one recurses once
per level of nesting (100,000 nested `[` overflow the C stack: a segfault),
the Python one too (500 levels: a RecursionError with no line). A config or
a secrets file is input we do not control, so `BoundedLoader` composes the
parser's events into nodes itself, in a loop, with at most `max_depth`
levels of collections open; a deeper collection goes to `too_deep`, where a
reader either refuses the document or stands a marker in its place.

The events come from libyaml's parser when PyYAML has it (scanning is most of
a load, and libyaml scans about ten times faster) and PyYAML's own otherwise;
`libyaml=False` forces PyYAML's, so tests hold both to the same bounds.

The readers on top, and what each decides:
- `smagent.config_yaml` (the config file): strict, every problem an error
  with line and column; text keys, no duplicates, alias expansion measured;
- `smagent.providers.secrets_yaml` (the `file` provider): contained, a value
  that cannot be built fails only its own secret.
"""

from __future__ import annotations

from typing import Any, ClassVar

from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    ScalarEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

_CParser: Any
try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None

HAS_LIBYAML = _CParser is not None

BUILD_ERRORS = (ValueError, OverflowError, TypeError, IndexError, KeyError, AttributeError)
"""What SafeConstructor lets out, besides its own errors, for a value it cannot build:
`!!int x` (ValueError), `!!int ''` (IndexError), `!!bool x` (KeyError), `!!timestamp x`
(AttributeError)."""


class _PythonParser(Reader, Scanner, Parser):
    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)


class Open:
    """A sequence or mapping being composed; for a mapping, the key waiting for its value."""

    __slots__ = ("key", "keys", "node")

    def __init__(self, node: SequenceNode | MappingNode) -> None:
        self.node = node
        self.key: Node | None = None
        self.keys: dict[str, Any] | None = None
        """A reader's record of the keys seen so far (the config's duplicate check)."""


class BoundedLoader(SafeConstructor, Resolver):
    """A parser's events composed into nodes without recursion, then built by SafeConstructor.

    A reader subclasses it, sets `max_depth` and `document`, and overrides
    the hooks (`too_deep`, `check_key`, `check_scalar`) and SafeConstructor's
    methods to put its policy on top.
    """

    max_depth: ClassVar[int]
    """Levels of collections, the document's own counting as one."""
    document: ClassVar[str]
    """What a document is, for the error on a second one ("a config file")."""

    def __init__(self, text: str, *, libyaml: bool = True) -> None:
        parser: Any = _CParser(text) if libyaml and _CParser is not None else _PythonParser(text)
        self._parser = parser
        self.get_event = parser.get_event
        self.check_event = parser.check_event
        self.anchors: dict[str, Node] = {}
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    def dispose(self) -> None:
        """Break the parser's reference cycles (its state is a bound method)."""
        self._parser.dispose()

    # --- hooks --------------------------------------------------------------------------------

    def too_deep(self, start: Any, depth: int) -> Node:
        """What stands for a collection opened inside `depth` (= max_depth) open ones: refused."""
        too_deep = f"nested more than {self.max_depth} levels deep"
        raise ComposerError(None, None, too_deep, start.start_mark)

    def check_key(self, mapping: Open, key: Node) -> None:
        """Called with each key of a mapping, in order, before its value is composed."""

    def check_scalar(self, event: Any) -> None:
        """Called with each scalar's event, before its node is made."""

    # --- composition --------------------------------------------------------------------------

    def get_single_node(self) -> Node | None:
        self.get_event()  # stream start
        document = None
        if not self.check_event(StreamEndEvent):
            self.get_event()  # document start
            document = self.compose_document()
            self.get_event()  # document end
        if not self.check_event(StreamEndEvent):
            raise ComposerError(
                None,
                None,
                f"{self.document} holds one YAML document; this `---` starts a second one",
                self.get_event().start_mark,
            )
        self.get_event()  # stream end
        return document

    def compose_document(self) -> Node:
        """The nodes of one document, composed in a loop over the events, checked on the way."""
        anchors = self.anchors
        get_event = self.get_event
        resolve: Any = self.resolve
        stack: list[Open] = []
        while True:
            event = get_event()
            start: Any = event.start_mark  # a yaml.Mark, or libyaml's own Mark
            end: Any = event.end_mark
            done: Node
            if isinstance(event, CollectionEndEvent):
                done = stack.pop().node
                done.end_mark = end
            elif isinstance(event, AliasEvent):
                if event.anchor not in anchors:
                    raise ComposerError(
                        None, None, f"found undefined alias {event.anchor!r}", start
                    )
                done = anchors[event.anchor]
            elif isinstance(event, CollectionStartEvent) and len(stack) >= self.max_depth:
                done = self.too_deep(event, len(stack))  # before its anchor is looked at
            elif event.anchor is not None and event.anchor in anchors:
                raise ComposerError(None, None, f"found duplicate anchor {event.anchor!r}", start)
            elif isinstance(event, ScalarEvent):
                self.check_scalar(event)
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolve(ScalarNode, event.value, event.implicit)
                done = ScalarNode(tag, event.value, start, end, style=event.style)
                if event.anchor is not None:
                    anchors[event.anchor] = done
            else:  # the start of a sequence or a mapping
                kind = SequenceNode if isinstance(event, SequenceStartEvent) else MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolve(kind, None, event.implicit)
                collection = kind(tag, [], start, None, flow_style=event.flow_style)
                if event.anchor is not None:
                    anchors[event.anchor] = collection  # an alias inside it makes a cycle
                stack.append(Open(collection))
                continue
            if not stack:
                return done
            parent = stack[-1]
            if isinstance(parent.node, SequenceNode):
                parent.node.value.append(done)
            elif parent.key is not None:
                parent.node.value.append((parent.key, done))
                parent.key = None
            else:
                self.check_key(parent, done)
                parent.key = done
