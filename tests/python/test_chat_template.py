"""kdae's built-in chat templates against transformers' apply_chat_template(tokenize=False) run on
the models' real Jinja chat_template strings (copied from their tokenizer_config.json; the Mistral
v0.3 tool-calling branches are left out because kdae renders no tools)."""
import json
import os
import subprocess

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

MISTRAL_V02 = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

MISTRAL_V03 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

MISTRAL_LEGACY = r"""{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"""

LLAMA3 = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""

QWEN2 = r"""{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

SMOLLM2 = r"""{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

CHATML = r"""{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

# Real newlines inside the string literals, as in zephyr-7b-beta's tokenizer_config.json.
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

# Alpaca has no official HF template; this is the rendering kdae defines (docs/data.md).
ALPACA = r"""{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% set loop_messages = messages[1:] %}{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' }}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"""

# name -> (jinja, bos, eos, end-of-turn text, template trims assistant content, accepts system)
TEMPLATES = {
    "mistral": (MISTRAL_V02, "<s>", "</s>", "</s>", False, True),
    "mistral-v3": (MISTRAL_V03, "<s>", "</s>", "</s>", True, True),
    "mistral-legacy": (MISTRAL_LEGACY, "<s>", "</s>", "</s>", False, False),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", True, True),
    "qwen2": (QWEN2, "", "<|im_end|>", "<|im_end|>", False, True),
    "smollm2": (SMOLLM2, "", "<|im_end|>", "<|im_end|>", False, True),
    "chatml": (CHATML, "", "<|im_end|>", "<|im_end|>", False, True),
    "zephyr": (ZEPHYR, "<s>", "</s>", "</s>", False, True),
    "alpaca": (ALPACA, "<s>", "</s>", "</s>", False, True),
}

SYSTEM = {"role": "system", "content": "You are terse.\nAnswer briefly."}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "ANSWER_ONE is 4."}],
    [SYSTEM, {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "ANSWER_ONE hello"}],
    [SYSTEM,
     {"role": "user", "content": "  first question\n"},
     {"role": "assistant", "content": " ANSWER_ONE\nline two  \n"},
     {"role": "user", "content": "second? ünïcode ✓"},
     {"role": "assistant", "content": "ANSWER_TWO done"},
     {"role": "user", "content": "third, unanswered"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "ANSWER_ONE b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "ANSWER_TWO d"}],
]


def hf_render(jinja, bos, eos, messages, add_generation_prompt):
    vocab = {"<unk>": 0, bos or "<bos>": 1, eos: 2}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  bos_token=bos or None, eos_token=eos, unk_token="<unk>")
    tok.chat_template = jinja
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def kdae_render(jobs):
    tool = os.path.join(os.environ["KDAE_BUILD"], "tests", "kdae_render_chat")
    run = subprocess.run([tool], input=json.dumps(jobs).encode(), capture_output=True, check=True)
    return json.loads(run.stdout)


def cases():
    for name, (jinja, bos, eos, eot, trims, system_ok) in TEMPLATES.items():
        for i, conv in enumerate(CONVERSATIONS):
            if conv[0]["role"] == "system" and not system_ok:
                continue
            for gen in (False, True):
                yield name, i, gen


@pytest.mark.parametrize("by_name", [True, False], ids=["by_name", "detected"])
def test_rendering_matches_transformers(by_name):
    jobs, expect = [], []
    for name, i, gen in cases():
        jinja, bos, eos, eot, trims, _ = TEMPLATES[name]
        conv = CONVERSATIONS[i]
        jobs.append({"template": name if by_name else "", "jinja": jinja, "bos": bos, "eos": eos,
                     "messages": conv, "add_generation_prompt": gen})
        expect.append((name, i, gen, hf_render(jinja, bos, eos, conv, gen)))
    results = kdae_render(jobs)
    assert len(results) == len(expect) > 50
    for (name, i, gen, oracle), got in zip(expect, results):
        where = f"{name} conversation {i} generation_prompt={gen}"
        assert got["name"] == name, where
        assert "error" not in got, (where, got.get("error"))
        assert got["text"] == oracle, where
        # Spans: each assistant content (trimmed where the template trims) plus the end-of-turn
        # text, located independently in the oracle's text by its unique ANSWER_ marker.
        eot = TEMPLATES[name][3]
        answers = [m["content"] for m in CONVERSATIONS[i] if m["role"] == "assistant"]
        want = []
        for a in answers:
            body = a.strip() if TEMPLATES[name][4] else a
            start = oracle.index(body)
            assert oracle[start + len(body):].startswith(eot), where
            b0 = len(oracle[:start].encode())
            want.append([b0, b0 + len((body + eot).encode())])
        assert got["spans"] == want, where


def test_role_errors():
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    got = kdae_render([{"template": "mistral", "jinja": "", "bos": "<s>", "eos": "</s>", "messages": bad}])
    assert "alternate" in got[0]["error"]
    with pytest.raises(Exception):
        hf_render(MISTRAL_V02, "<s>", "</s>", bad, False)
    got = kdae_render([{"template": "", "jinja": "{{ messages }}", "bos": "", "eos": "", "messages": bad}])
    assert got[0]["name"] == ""
