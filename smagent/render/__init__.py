"""Sandboxed Jinja2 rendering, and the discovery of the references a template uses.

Discovery is rendering. A template is rendered with the values known so far;
a reference with no value yet renders as `Pending` (a forgiving undefined)
and is recorded. The pipeline fetches everything recorded by every template
at once, then renders again. Most templates finish in the second round;
one whose references depend on a secret's value (a key chosen by another
secret, a loop over a secret's list) simply takes another round. This finds
every reference that static analysis would, plus the dynamic ones, and the
template is never written from a round that saw a `Pending`.

No message built here contains a secret value, nor text derived from one.

A Renderer outlives a pass (compiling is the expensive part): each outcome
names the files the render read or looked for (`RenderOutcome.files`, what
the agent watches), `Renderer.invalidate(paths)` makes the next render read
changed files again, and `Renderer.for_config(config)` keeps the compiled
templates across a config reload when the folders and refused files are the same.

The modules, in the order a render meets them:

    renderer.py     Renderer: one environment per config; render() -> RenderOutcome
    loader.py       template files by name, and what `{% include %}` may read
    environment.py  the Jinja environment: the sandbox, key-first access, the filters
    sandbox.py      the limits of one render (steps, sizes, CPU time)
    context.py      the values of one render, and the objects a template sees
    arcion.py       bare `arcion-sm://NS/KEY` tokens in YAML files
    scram.py        the scram_sha256 filter and its cache of verifiers
    literals.py     the text written in a template: what messages may show
    messages.py     messages that hold no value
    outcome.py      RenderOutcome, Problem, ReferenceProblem
"""

from smagent.render.context import extract
from smagent.render.outcome import COMPUTED, Problem, ReferenceProblem, RenderOutcome
from smagent.render.renderer import Renderer

__all__ = ["COMPUTED", "Problem", "ReferenceProblem", "RenderOutcome", "Renderer", "extract"]
