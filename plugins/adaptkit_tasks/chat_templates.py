"""Chat templates: which one a run uses, and a conversation rendered as masked/trained pieces.

Rendering is the tokenizer's own ``apply_chat_template``, so training sees exactly the text
``predict`` (and any serving stack using the same tokenizer) will show the model. A recipe may
name a template or give its Jinja text when the tokenizer has none; a tokenizer without any
template is refused when the tokenizer is loaded (``adaptkit plan`` and the start of a run),
never in the middle of one.
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

from adaptkit import AdaptkitError, DataError

# Well-known layouts, for tokenizers that ship none. Each ends an assistant turn with a marker
# the model learns to emit, so generation knows where to stop.
NAMED_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    "plain": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
        "{% else %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"),
}

# Markers that end an assistant turn in common templates; those the vocabulary holds as one
# token stop generation along with the end-of-sequence token.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


# Bounds on rendering the sample conversation (``render_cost_problem``). A real template renders
# two turns in well under a millisecond, with a few dozen loop steps and a few hundred characters.
MAX_RENDER_STEPS = 100_000  # items all range() calls may yield together
MAX_RENDER_CHARS = 1_000_000  # characters of output (and of a string or list built with *)
MAX_RENDER_SECONDS = 2.0
SAMPLE_CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "hello"}]


class _TooCostly(Exception):
    """A trial render ran past one of the bounds; the message says which."""


def render_cost_problem(template: str, messages: Optional[list[dict[str, str]]] = None) -> Optional[str]:
    """Why rendering ``template`` would stall a run, found by rendering a sample conversation (or
    ``messages``, a real row's) under bounds; None when it renders within them (or fails in another
    way, which ``install_template`` reports with the real tokenizer).

    A template is code: nested ``range(100000)`` loops passed ``validate`` (it only compiles) and
    then hung ``run`` with no output, in the tokenizer's render of the first row. The trial render
    uses a sandbox configured as transformers' own (trim_blocks, lstrip_blocks, loopcontrols, the
    ``raise_exception``/``tojson`` helpers), with ``range`` counting its steps, ``*`` and ``**``
    bounded, and the output streamed and measured, all against a clock. Pure jinja2: ``adaptkit
    validate`` runs it, and ``adaptkit plan`` and the start of a run again with the tokenizer's own.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    started = time.monotonic()
    steps = [0]

    def clock() -> None:
        if time.monotonic() - started > MAX_RENDER_SECONDS:
            raise _TooCostly(f"rendering a sample conversation took more than {MAX_RENDER_SECONDS:g} s")

    def bounded_range(*args: int):
        for value in range(*args):
            steps[0] += 1
            if steps[0] > MAX_RENDER_STEPS:
                raise _TooCostly(f"its range() loops take more than {MAX_RENDER_STEPS:,} steps to render a "
                                 f"sample conversation")
            if steps[0] % 1024 == 0:
                clock()
            yield value

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            clock()
            if operator == "**" and isinstance(right, int) and abs(right) > 1000 and \
                    isinstance(left, (int, float)) and abs(left) > 1:
                raise _TooCostly(f"it computes {left!r} ** {right!r}")
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and \
                            len(seq) * times > MAX_RENDER_CHARS:
                        raise _TooCostly(f"it builds a {type(seq).__name__} of {len(seq) * times:,} items with *")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(range=bounded_range, raise_exception=raise_exception,
                       strftime_now=lambda fmt: time.strftime(fmt))
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    try:
        compiled = env.from_string(template)
        for generation in (False, True):
            size = 0
            for chunk in compiled.generate(messages=messages or SAMPLE_CONVERSATION, add_generation_prompt=generation,
                                           bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"):
                size += len(chunk)
                if size > MAX_RENDER_CHARS:
                    raise _TooCostly(f"it renders more than {MAX_RENDER_CHARS:,} characters for a sample "
                                     f"conversation")
                clock()
    except _TooCostly as exc:
        return f"chat template is too costly to render: {exc}; every training row would stall on it"
    except Exception:  # noqa: BLE001 - a template error of another kind is install_template's to report
        return None
    return None


def compiling_template(value: Optional[str]) -> Optional[str]:
    """A task option's validator body: ``value`` unchanged when it is None or compiles, else the
    ``ValueError`` pydantic reports at the recipe's key (instruct, preference and reward share it)."""
    problem = template_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


def template_problem(value: str) -> Optional[str]:
    """Why ``value`` is neither a named template nor Jinja that compiles and renders a sample
    conversation within bounds (``render_cost_problem``); None when it is fine.

    Pure jinja2 (no torch, no tokenizer), so ``adaptkit validate`` answers it.
    """
    if "{" not in value:
        if value in NAMED_TEMPLATES:
            return None
        return f"unknown chat template name {value!r} (named templates: {', '.join(sorted(NAMED_TEMPLATES))}; " \
               f"or give the Jinja text of a template)"
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(value)
    except jinja2.TemplateSyntaxError as exc:
        return f"chat template is not valid Jinja: {exc.message} (template line {exc.lineno})"
    if "messages" not in value:
        return "chat template never reads `messages`, so it cannot render a conversation"
    return render_cost_problem(value)


def install_template(tokenizer: Any, option: Optional[str], model: str) -> None:
    """Give ``tokenizer`` the recipe's template (it wins over the tokenizer's own), or refuse
    a tokenizer that has none: every non-text format is rendered through it."""
    if option is not None:
        tokenizer.chat_template = NAMED_TEMPLATES.get(option, option)
    template = getattr(tokenizer, "chat_template", None)
    problem = render_cost_problem(template) if isinstance(template, str) else None
    if problem:  # the tokenizer's own template too: checked before the tokenizer renders a row with it
        raise AdaptkitError(f"task.chat_template: the template of {model if option is None else 'the recipe'}: "
                            f"{problem}")
    if not template:
        raise AdaptkitError(
            f"task.chat_template: the tokenizer of {model} has no chat template, and the recipe gives none; "
            f"set task.chat_template to a name ({', '.join(sorted(NAMED_TEMPLATES))}) or to the Jinja text "
            f"of the template the model should learn (or use format: text)")
    try:  # a template that needs a token this tokenizer lacks (eos_token) fails here, not mid-run
        render_pieces(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    except DataError as exc:
        raise AdaptkitError(f"task.chat_template: with the tokenizer of {model}, {exc}") from None


def stop_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a generated answer: the end token and single-token end-of-turn markers."""
    ids = []
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.append(int(value))
            break
    unknown = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    for marker in END_OF_TURN:
        value = vocab.get(marker)
        if value is not None and value != unknown and value not in ids:
            ids.append(int(value))
    return ids


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    if not messages:
        return ""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as exc:  # jinja raises TemplateError, templates raise their own (raise_exception)
        raise DataError(f"the chat template cannot render this conversation: {str(exc).splitlines()[0]}") from None
    return text if isinstance(text, str) else str(text)


def render_pieces(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, is_answer)`` pieces that concatenate to the full render.

    An answer piece is what the template adds for one assistant turn after its generation
    prompt: the turn's content and its end-of-turn marker. The template is rendered once per
    assistant turn (prefix with the generation prompt, then prefix plus the turn), so the
    boundaries are the template's own, whatever its markers. A conversation that ends with a
    non-assistant turn is a prompt: its last piece ends with the generation prompt, exactly as
    the same prefix was rendered in training. A template whose render of a prefix is not a
    prefix of the longer render (it rewrites earlier turns) cannot be masked and is refused.
    """
    pieces: list[tuple[str, bool]] = []
    done = ""

    def extend(longer: str, turn: int) -> str:
        if not longer.startswith(done):
            raise DataError(f"the chat template renders the conversation before turn {turn} differently once "
                            f"later turns follow (the shorter render is not a prefix of the longer one), so the "
                            f"answer tokens cannot be located; use another chat template")
        return longer[len(done):]

    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], generation=True)
        head = extend(prompt, index + 1)
        if head:
            pieces.append((head, False))
        done = prompt
        full = _render(tokenizer, messages[:index + 1], generation=False)
        pieces.append((extend(full, index + 1), True))
        done = full
    asks = messages[-1]["role"] != "assistant"
    tail = extend(_render(tokenizer, messages, generation=asks), len(messages))
    if tail:
        pieces.append((tail, False))
    return pieces
