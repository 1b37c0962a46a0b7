"""Training, dev scoring and evaluation see the same tokens, on hub-cache models that carry the
real Qwen2-7B-Instruct / Llama-3-8B-Instruct chat templates (whose default system prompts
differ from LLaMA-Factory's templates: the recipe's system prompt is sent explicitly)."""
import json
import subprocess
import types

import pytest

from harness import hub
from harness.data import converters, readers
from harness.data.prompts import alpaca, mcqa_choices, mcqa_prompt, qa_prompt
from harness.data.stage import convert_raw
from harness.recipe import DEFAULT_SYSTEM_PROMPT
from harness.scoring.requests import Requests

from conftest import SHARED_DATA, TINY_TEST_REPOS, TRAIN_ENV, needs_train_env

pytestmark = needs_train_env

# LLaMA-Factory's own encoding of a training example (its template, default_system as the
# harness's sft config sets it), run in the train env.
LF_ENCODE = """
import json, sys
from transformers import AutoTokenizer
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments
args = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(args["model"])
template = get_template_and_fix_tokenizer(
    tok, DataArguments(template=args["template"], default_system=args["system"]))
out = [template.encode_oneturn(tok, [{"role": "user", "content": p},
                                     {"role": "assistant", "content": a}])
       for p, a in args["pairs"]]
print(json.dumps(out))
"""


def records(source: str, path: str, n: int = 2) -> list[dict]:
    raw = readers.read_local(source, source, SHARED_DATA / path)
    by_split, _, _ = convert_raw(converters.SOURCES[source], raw)
    return next(iter(by_split.values()))[:n]


def lf_encode(model, template: str, pairs):
    proc = subprocess.run([str(TRAIN_ENV / "bin" / "python"), "-c", LF_ENCODE,
                           json.dumps({"model": str(model), "template": template,
                                       "system": DEFAULT_SYSTEM_PROMPT, "pairs": pairs})],
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1",
                                                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch,template", [("qwen2", "qwen"), ("llama", "llama3")])
def test_training_scoring_and_eval_see_the_same_tokens(hub_env, arch, template):
    from lm_eval.models import huggingface
    from transformers import AutoTokenizer

    from harness.evaluation import vllm_lm

    model = hub.resolve(TINY_TEST_REPOS[arch]).path
    tok = AutoTokenizer.from_pretrained(str(model))
    shipped = json.loads((SHARED_DATA / "chat_templates" / (
        "qwen2_7b_instruct.json" if arch == "qwen2" else "llama3_8b_instruct.json")).read_text())
    # the hub-cache model carries the real model's own template, as a hub model does
    assert tok.chat_template == shipped["chat_template"] or (
        model / "chat_template.jinja").read_text() == shipped["chat_template"]
    assert tok.eos_token == shipped["eos_token"]

    mcqa = records("medqa", "medqa/test.jsonl") + records("cmexam", "cmexam/val.jsonl")
    qa = records("chatdoctor", "chatdoctor_genmedgpt5k/heldout_last300.jsonl")
    examples = [(mcqa_prompt(r), mcqa_choices(r)[0], alpaca(r)) for r in mcqa]
    examples += [(qa_prompt(r), r["answer"], alpaca(r)) for r in qa]
    for prompt, _, lf_record in examples:  # the LLaMA-Factory file holds the same prompt
        assert f"{lf_record['instruction']}\n{lf_record['input']}" == prompt

    lf = lf_encode(model, template, [(p, a) for p, a, _ in examples])
    scorer = Requests(tok, True, DEFAULT_SYSTEM_PROMPT)
    hf_lm = types.SimpleNamespace(tokenizer=tok, add_bos_token=None, backend="causal",
                                  prefix_token_id=tok.eos_token_id if tok.bos_token_id is None
                                  else tok.bos_token_id)
    hf_lm.tok_encode = lambda s, **kw: huggingface.HFLM.tok_encode(hf_lm, s, **kw)
    vllm_lm_ = types.SimpleNamespace(tokenizer=tok, add_bos_token=None,
                                     prefix_token_id=hf_lm.prefix_token_id)
    chat = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
    for (prompt, answer, _), (lf_prompt, lf_answer) in zip(examples, lf):
        context, continuation = scorer.context(prompt), scorer.encode(answer)
        # LLaMA-Factory trains on exactly the context the scorer scores
        assert lf_prompt == context
        assert lf_answer[:len(continuation)] == continuation
        # lm-eval renders the chat (system + user) and encodes it as the scorer does, on both
        # backends (its BOS rule: no second BOS where the template wrote one)
        rendered = tok.apply_chat_template(chat + [{"role": "user", "content": prompt}],
                                           tokenize=False, add_generation_prompt=True)
        assert hf_lm.tok_encode(rendered) == context
        assert vllm_lm.SwappableVLLM.tok_encode(vllm_lm_, rendered) == context
        assert hf_lm.tok_encode(rendered + answer) == context + continuation
        if arch == "llama":
            assert context.count(tok.bos_token_id) == 1 and context[0] == tok.bos_token_id
