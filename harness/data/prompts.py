"""Prompt text shared by the specialists' training files and the lm-eval tasks.

The specialists are trained on exactly the prompt the tasks later score, so the format is
defined once, here: a doctor's instruction, the question, the lettered options, "Answer:",
and the answer is the option's letter. Records with `answer_format: "text"` (the synthetic
testbed) are cloze items instead: the question and "Answer:" without the options, and the answer
is the option's text, so a model is scored by what it knows, not by the exam format.
"""
from __future__ import annotations

from typing import Any

MCQA_INSTRUCTION = {
    "en": "You are a medical doctor taking a licensing exam. Answer the multiple-choice "
          "question with the letter of the correct option.",
    "zh": "你是一名正在参加执业医师考试的医生。请回答下面的单项选择题，只需给出正确选项的字母。",
}
CLOZE_INSTRUCTION = {
    "en": "You are a medical doctor. Answer the question.",
    "zh": "你是一名医生，请回答问题。",
}
ANSWER_CUE = {"en": "Answer:", "zh": "答案："}
QA_INSTRUCTION = {
    "en": "You are a medical doctor. Answer the patient's question.",
    "zh": "你是一名医生，请回答患者的问题。",
}


def answers_text(record: dict[str, Any]) -> bool:
    return record.get("answer_format", "letter") == "text"


def mcqa_query(record: dict[str, Any]) -> str:
    if answers_text(record):
        return f"{record['question']}\n{ANSWER_CUE[record['language']]}"
    options = "\n".join(f"{letter}. {text}" for letter, text in record["options"].items())
    return f"{record['question']}\n{options}\n{ANSWER_CUE[record['language']]}"


def mcqa_instruction(record: dict[str, Any]) -> str:
    table = CLOZE_INSTRUCTION if answers_text(record) else MCQA_INSTRUCTION
    return table[record["language"]]


def mcqa_prompt(record: dict[str, Any]) -> str:
    return f"{mcqa_instruction(record)}\n{mcqa_query(record)}"


def mcqa_choices(record: dict[str, Any]) -> list[str]:
    """What each option is scored by, in option order: its letter, or its text (cloze)."""
    return list(record["options"].values() if answers_text(record) else record["options"])


def mcqa_answer(record: dict[str, Any]) -> str:
    """The training target: the choice of the correct option."""
    return record["options"][record["answer"]] if answers_text(record) else record["answer"]


def qa_prompt(record: dict[str, Any]) -> str:
    return f"{QA_INSTRUCTION[record['language']]}\n{record['question']}"


def alpaca(record: dict[str, Any]) -> dict[str, str]:
    """LLaMA-Factory's alpaca format; it joins instruction and input with a newline, so the
    model sees exactly mcqa_prompt / qa_prompt."""
    if "options" in record:
        return {"instruction": mcqa_instruction(record), "input": mcqa_query(record),
                "output": mcqa_answer(record)}
    return {"instruction": QA_INSTRUCTION[record["language"]], "input": record["question"],
            "output": record["answer"]}
