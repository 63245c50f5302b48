"""Tests for smagent.bounded_yaml: the composer under the config's and the secrets' readers."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import yaml
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode

from smagent.bounded_yaml import HAS_LIBYAML, BoundedLoader

SECOND = "this `---` starts a second one"


class Loader(BoundedLoader):
    max_depth = 8
    document = "a test file"


@pytest.fixture(params=[True, False], ids=["libyaml", "python"])
def libyaml(request: pytest.FixtureRequest) -> bool:
    if request.param and not HAS_LIBYAML:
        pytest.skip("PyYAML was built without libyaml")
    value: bool = request.param
    return value


def shape(node: Node, seen: dict[int, int] | None = None) -> Any:
    """A node graph as plain data: tags, values, styles, positions, and which nodes are shared."""
    seen = {} if seen is None else seen
    if id(node) in seen:
        return ("alias of", seen[id(node)])
    seen[id(node)] = len(seen)
    where = (node.start_mark.line, node.start_mark.column, node.end_mark.line, node.end_mark.column)
    if isinstance(node, ScalarNode):
        return (node.tag, node.value, node.style, where)
    assert isinstance(node, CollectionNode)
    if isinstance(node, MappingNode):
        items = [(shape(k, seen), shape(v, seen)) for k, v in node.value]
        return (node.tag, items, node.flow_style, where)
    return (node.tag, [shape(item, seen) for item in node.value], node.flow_style, where)


DOCUMENTS = [
    "a: 1\nb: [x, 'y', \"z\"]\nc: {d: ~, e: true}\n",
    "base: &b {k: v}\nuse: {<<: *b, j: 2}\nlist: [*b, *b]\n",
    "- !!str 1\n- !custom {a: b}\n- !!binary aGVsbG8=\n- ! 12\n",
    "text: |\n  two\n  lines\nfolded: >-\n  one\n  line\n",
    "? complex\n: key\n[a, b]: c\n",
    "--- &top\nself: *top\n...\n",
    "seq: &s [1, [2, [3, &deep [4]]]]\nagain: *deep\n",
]


@pytest.mark.parametrize("text", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_nodes_are_those_of_pyyamls_own_composer(libyaml: bool, text: str) -> None:
    """Within the depth limit, the nodes equal PyYAML's: tags, styles, marks, shared aliases."""
    pyyaml = yaml.compose(text, Loader=yaml.CSafeLoader if libyaml else yaml.SafeLoader)

    ours = Loader(text, libyaml=libyaml).get_single_node()

    assert pyyaml is not None
    assert ours is not None
    assert shape(pyyaml) == shape(ours)


@pytest.mark.parametrize("depth", [9, 100_000])
def test_collection_past_max_depth_is_refused_at_its_start(libyaml: bool, depth: int) -> None:
    """A collection one level past max_depth is refused there, without recursion."""
    with pytest.raises(yaml.composer.ComposerError) as info:
        Loader("[" * depth + "]" * depth, libyaml=libyaml).get_single_node()

    assert "nested more than 8 levels deep" == info.value.problem
    assert info.value.problem_mark is not None
    assert 8 == info.value.problem_mark.column


def test_hooks_see_every_scalar_and_key_in_order(libyaml: bool) -> None:
    """check_scalar sees each scalar and check_key each key, in document order."""

    class Recording(Loader):
        seen: ClassVar[list[str]] = []

        def check_scalar(self, event: Any) -> None:
            self.seen.append(f"scalar {event.value}")

        def check_key(self, mapping: Any, key: Node) -> None:
            self.seen.append(f"key {key.value}")

    Recording("a: [1, 2]\nb: {c: 3}\n", libyaml=libyaml).get_single_node()

    assert [
        "scalar a",
        "key a",
        "scalar 1",
        "scalar 2",
        "scalar b",
        "key b",
        "scalar c",
        "key c",
        "scalar 3",
    ] == Recording.seen


@pytest.mark.parametrize(
    ("text", "problem", "line"),
    [
        (
            "a: 1\n---\nb: 2\n",
            "a test file holds one YAML document; this `---` starts a second one",
            2,
        ),
        ("a: &x 1\nb: &x 2\n", "found duplicate anchor 'x'", 2),
        ("a: 1\nb: *nope\n", "found undefined alias 'nope'", 2),
    ],
    ids=["second-document", "duplicate-anchor", "undefined-alias"],
)
def test_document_errors_name_their_line(libyaml: bool, text: str, problem: str, line: int) -> None:
    """A second document, a duplicate anchor and an undefined alias are errors at their line."""
    with pytest.raises(yaml.composer.ComposerError) as info:
        Loader(text, libyaml=libyaml).get_single_node()

    assert problem == info.value.problem
    assert info.value.problem_mark is not None
    assert line == info.value.problem_mark.line + 1
